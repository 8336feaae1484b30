//! What cache keys are made of. Every input goes into a sha256 with its name
//! and length, so no two different sets of inputs give one key; secret variable
//! values enter only through that hash and are never stored.
//!
//! Tree inputs come from git (`git ls-tree`), read right after the checkout and
//! before any container runs, so no build has had the chance to touch `.git`.

use std::path::{Component as PathComponent, Path};

use kiln_protocol::EnvVar;
use sha2::{Digest, Sha256};

use crate::package_manager::LOCKFILES;
use crate::repo_fs::RepoFs;

/// Files besides the lockfile that decide what an install puts in node_modules.
const MANIFESTS: &[&str] = &[
    "package.json",
    ".npmrc",
    ".yarnrc",
    ".yarnrc.yml",
    "pnpm-workspace.yaml",
    ".pnpmfile.cjs",
    "bunfig.toml",
];
/// Directories never walked for manifests.
const SKIP_DIRS: &[&str] = &[
    "node_modules",
    ".git",
    ".medusa",
    ".next",
    ".yarn",
    "dist",
    "build",
];
const MAX_MANIFESTS: usize = 10_000;
const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// A key under construction.
#[derive(Default)]
pub struct Key(Sha256);

impl Key {
    pub fn new(kind: &str) -> Key {
        let mut key = Key(Sha256::new());
        key.add("kind", kind.as_bytes());
        key
    }

    pub fn add(&mut self, name: &str, value: &[u8]) -> &mut Key {
        for part in [name.as_bytes(), value] {
            self.0.update((part.len() as u64).to_le_bytes());
            self.0.update(part);
        }
        self
    }

    pub fn text(&mut self, name: &str, value: &str) -> &mut Key {
        self.add(name, value.as_bytes())
    }

    pub fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}

/// The build variables, all of them: a build sees every one. Sorted by name, so
/// their order does not matter.
pub fn add_env(key: &mut Key, env: &[EnvVar]) {
    let mut vars: Vec<&EnvVar> = env.iter().collect();
    vars.sort_by(|a, b| a.name.cmp(&b.name));
    for var in vars {
        key.text("env", &var.name).text("value", &var.value);
    }
}

/// The lockfiles in `install_dir`; `None` when there is none (nothing to key an
/// install by).
pub fn lockfiles(fs: &RepoFs, install_dir: &Path) -> Option<String> {
    let mut key = Key::new("lockfiles");
    let mut any = false;
    for (file, _) in LOCKFILES {
        let rel = install_dir.join(file);
        if let Ok(Some(text)) = fs.read(&rel, 256 << 20) {
            key.text(file, &text);
            any = true;
        }
    }
    any.then(|| key.finish())
}

/// Every manifest under the checkout that an install reads (`package.json` of the
/// workspace and its members, `.npmrc`, `.yarnrc.yml`, …), by path and content.
pub fn manifests(fs: &RepoFs) -> String {
    let mut key = Key::new("manifests");
    let root = fs.root().to_owned();
    let mut found: Vec<String> = walkdir::WalkDir::new(&root)
        .follow_links(false)
        .max_depth(8)
        .into_iter()
        .filter_entry(|entry| {
            entry.depth() == 0
                || !(entry.file_type().is_dir()
                    && SKIP_DIRS.iter().any(|skip| entry.file_name() == *skip))
        })
        .flatten()
        .filter(|entry| {
            entry.file_type().is_file() && MANIFESTS.iter().any(|name| entry.file_name() == *name)
        })
        .filter_map(|entry| {
            let rel = entry.path().strip_prefix(&root).ok()?;
            Some(rel.to_string_lossy().into_owned())
        })
        .take(MAX_MANIFESTS)
        .collect();
    found.sort();
    for rel in found {
        let text = fs.read(Path::new(&rel), MAX_MANIFEST_BYTES).ok().flatten();
        key.text("path", &rel)
            .text("content", text.as_deref().unwrap_or("<unreadable>"));
    }
    key.finish()
}

/// Runs git read-only in the checkout, with nothing of the host's git config.
fn git(src: &Path, args: &[&str]) -> std::io::Result<String> {
    // The checkout belongs to the build user by now; git reads it for us anyway.
    let mut safe = std::ffi::OsString::from("safe.directory=");
    safe.push(src.as_os_str());
    let output = std::process::Command::new("git")
        .arg("-c")
        .arg(safe)
        .arg("-C")
        .arg(src)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .output()?;
    if !output.status.success() {
        return Err(std::io::Error::other(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    String::from_utf8(output.stdout).map_err(std::io::Error::other)
}

/// The tree a component's build reads: the commit's whole tree, less
/// `excludes` (the other component's directory, workspace packages it does not
/// depend on), as one hash. Excluding the root, or a path the tree lacks,
/// excludes nothing.
pub fn tree(src: &Path, excludes: &[&Path]) -> std::io::Result<String> {
    let root = git(src, &["rev-parse", "HEAD^{tree}"])?.trim().to_owned();
    let parts: Vec<Vec<String>> = excludes
        .iter()
        .map(|path| {
            path.components()
                .filter_map(|part| match part {
                    PathComponent::Normal(name) => Some(name.to_string_lossy().into_owned()),
                    _ => None,
                })
                .collect::<Vec<String>>()
        })
        .filter(|parts| !parts.is_empty())
        .collect();
    if parts.is_empty() {
        return Ok(root);
    }
    tree_without(src, &root, &parts)
}

fn tree_without(src: &Path, tree: &str, excludes: &[Vec<String>]) -> std::io::Result<String> {
    let listing = git(src, &["ls-tree", "-z", "--full-tree", tree])?;
    let mut key = Key::new("tree");
    for line in listing.split('\0').filter(|line| !line.is_empty()) {
        // `<mode> <type> <id>\t<name>`
        let Some((head, name)) = line.split_once('\t') else {
            continue;
        };
        let here: Vec<&Vec<String>> = excludes.iter().filter(|parts| parts[0] == name).collect();
        if here.is_empty() {
            key.text("entry", line);
            continue;
        }
        if here.iter().any(|parts| parts.len() == 1) {
            continue;
        }
        let mut fields = head.split(' ');
        if let (Some(mode), Some("tree"), Some(id)) = (fields.next(), fields.next(), fields.next())
        {
            let deeper: Vec<Vec<String>> = here.iter().map(|parts| parts[1..].to_vec()).collect();
            let inner = tree_without(src, id, &deeper)?;
            key.text("entry", &format!("{mode} tree {inner}\t{name}"));
            continue;
        }
        key.text("entry", line);
    }
    Ok(key.finish())
}

/// The most workspace packages looked at for a component's dependencies.
const MAX_PACKAGES: usize = 200;

/// A file of the commit, read from git's objects (not the checkout, which a
/// build running beside may be writing).
pub fn committed_file(src: &Path, path: &str) -> Option<String> {
    git(src, &["show", &format!("HEAD:{path}")]).ok()
}

fn committed_package(src: &Path, dir: &Path) -> Option<serde_json::Value> {
    let path = if dir.as_os_str().is_empty() {
        "package.json".to_owned()
    } else {
        format!("{}/package.json", dir.display())
    };
    let text = committed_file(src, &path)?;
    if text.len() > 1 << 20 {
        return None;
    }
    serde_json::from_str(&text).ok()
}

fn dependency_names(package: &serde_json::Value) -> Vec<String> {
    [
        "dependencies",
        "devDependencies",
        "peerDependencies",
        "optionalDependencies",
    ]
    .iter()
    .filter_map(|field| package.get(field)?.as_object())
    .flat_map(|deps| deps.keys().cloned())
    .collect()
}

/// A component's tree as its output's key reads it.
pub struct ComponentTree {
    /// The tree's hash, with the component's own part of a shared lockfile.
    pub tree: std::io::Result<String>,
    /// The workspace packages left out: ones it does not depend on.
    pub unrelated: Vec<std::path::PathBuf>,
    /// The shared lockfile read by its part, if there is one.
    pub lockfile: Option<std::path::PathBuf>,
}

/// The committed tree of the component in `own_dir` of the checkout `src`:
/// all of it but `exclude` (the other component's folder), the workspace
/// packages it does not depend on, and a shared lockfile, which counts by
/// this component's part of it.
pub fn component_tree(src: &Path, own_dir: &Path, exclude: Option<&Path>) -> ComponentTree {
    let unrelated = unrelated_packages(src, own_dir);
    let lockfile =
        crate::cache::lockfile::component_part(|path| committed_file(src, path), own_dir);
    let mut excludes: Vec<&Path> = unrelated.iter().map(|dir| dir.as_path()).collect();
    excludes.extend(exclude);
    excludes.extend(lockfile.as_ref().map(|(path, _)| path.as_path()));
    let tree = tree(src, &excludes).map(|tree| match &lockfile {
        Some((path, part)) => {
            let mut key = Key::new("tree");
            key.text("tree", &tree)
                .text("lockfile", &path.display().to_string())
                .text("part", part);
            key.finish()
        }
        None => tree,
    });
    ComponentTree {
        tree,
        unrelated,
        lockfile: lockfile.map(|(path, _)| path),
    }
}

/// The workspace packages of the commit that the component in `component_dir`
/// does not depend on, directly or through another workspace package: their
/// changes cannot reach its build. The workspace is the root package.json's
/// `workspaces`, `pnpm-workspace.yaml`'s list and `apps/*`, `packages/*`
/// (only `dir/*` and plain folder patterns; others count as reaching it).
/// Nothing for a component at the root.
pub fn unrelated_packages(src: &Path, component_dir: &Path) -> Vec<std::path::PathBuf> {
    if component_dir.as_os_str().is_empty() || component_dir == Path::new(".") {
        return Vec::new();
    }
    // As committed: what the build's tree is, whatever the checkout holds now.
    let patterns = crate::detect::workspace_patterns(
        committed_package(src, Path::new("")).as_ref(),
        committed_file(src, "pnpm-workspace.yaml").as_deref(),
    );
    let mut dirs: Vec<std::path::PathBuf> = Vec::new();
    for pattern in patterns {
        let pattern = pattern.trim_end_matches('/');
        let inside = |text: &str| {
            !text.is_empty()
                && Path::new(text)
                    .components()
                    .all(|part| matches!(part, PathComponent::Normal(_)))
        };
        match pattern.strip_suffix("/*") {
            Some(parent) if inside(parent) => {
                let listing = git(
                    src,
                    &[
                        "ls-tree",
                        "-d",
                        "-z",
                        "--name-only",
                        "HEAD",
                        &format!("{parent}/"),
                    ],
                )
                .unwrap_or_default();
                dirs.extend(
                    listing
                        .split('\0')
                        .filter(|dir| !dir.is_empty())
                        .map(std::path::PathBuf::from),
                );
            }
            None if inside(pattern) && !pattern.contains('*') => dirs.push(pattern.into()),
            _ => {}
        }
    }
    dirs.sort();
    dirs.dedup();
    dirs.truncate(MAX_PACKAGES);
    // Each package's name and what it depends on.
    let packages: Vec<(std::path::PathBuf, String, Vec<String>)> = dirs
        .into_iter()
        .filter_map(|dir| {
            let package = committed_package(src, &dir)?;
            let name = package.get("name")?.as_str()?.to_owned();
            Some((dir, name, dependency_names(&package)))
        })
        .collect();
    let Some(component) = committed_package(src, component_dir) else {
        return Vec::new();
    };
    let mut reached: std::collections::BTreeSet<String> =
        dependency_names(&component).into_iter().collect();
    loop {
        let more: Vec<String> = packages
            .iter()
            .filter(|(_, name, _)| reached.contains(name))
            .flat_map(|(_, _, deps)| deps.iter().cloned())
            .filter(|dep| !reached.contains(dep))
            .collect();
        if more.is_empty() {
            break;
        }
        reached.extend(more);
    }
    packages
        .into_iter()
        .filter(|(dir, name, _)| {
            !reached.contains(name)
                && !dir.starts_with(component_dir)
                && !component_dir.starts_with(dir)
        })
        .map(|(dir, _, _)| dir)
        .collect()
}

/// A copied working tree's files (a local build's source: no git tree to
/// name), each as `<mode> <sha256> <path>` or `link <target> <path>`, sorted by
/// path; read once, right after the copy, before any step writes beside them.
pub fn files_of(src: &Path) -> std::io::Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    let walker = walkdir::WalkDir::new(src)
        .follow_links(false)
        .sort_by_file_name();
    for entry in walker {
        let entry = entry.map_err(std::io::Error::other)?;
        let relative = entry
            .path()
            .strip_prefix(src)
            .map_err(std::io::Error::other)?
            .to_string_lossy()
            .into_owned();
        let kind = entry.file_type();
        let line = if kind.is_symlink() {
            let target = std::fs::read_link(entry.path())?;
            format!("link {}", target.display())
        } else if kind.is_file() {
            let mut hasher = Sha256::new();
            std::io::copy(&mut std::fs::File::open(entry.path())?, &mut hasher)?;
            let executable =
                std::os::unix::fs::PermissionsExt::mode(&entry.metadata()?.permissions()) & 0o111;
            format!(
                "{} {}",
                if executable != 0 { "755" } else { "644" },
                hex::encode(hasher.finalize())
            )
        } else {
            continue;
        };
        files.push((relative, line));
    }
    Ok(files)
}

/// The tree a component's build reads from `files_of`, less `exclude` (the
/// other component's directory), as one hash.
pub fn files_tree(files: &[(String, String)], exclude: Option<&Path>) -> String {
    let exclude = exclude
        .map(|path| path.to_string_lossy().trim_matches('/').to_owned())
        .filter(|path| !path.is_empty() && path != ".");
    let mut key = Key::new("files");
    for (path, line) in files {
        if let Some(exclude) = &exclude {
            if path == exclude || path.starts_with(&format!("{exclude}/")) {
                continue;
            }
        }
        key.text("file", &format!("{line} {path}"));
    }
    key.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copied_trees_key_follows_its_files_and_leaves_out_the_other_component() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("backend/src")).unwrap();
        std::fs::create_dir_all(root.join("storefront")).unwrap();
        std::fs::write(root.join("backend/src/index.ts"), "one").unwrap();
        std::fs::write(root.join("storefront/page.tsx"), "page").unwrap();
        let key =
            |exclude: Option<&str>| files_tree(&files_of(root).unwrap(), exclude.map(Path::new));
        let (whole, backend) = (key(None), key(Some("storefront")));
        std::fs::write(root.join("storefront/page.tsx"), "page two").unwrap();
        assert_ne!(key(None), whole);
        assert_eq!(
            key(Some("storefront")),
            backend,
            "the other component's change"
        );
        std::fs::write(root.join("backend/src/index.ts"), "two").unwrap();
        assert_ne!(key(Some("storefront")), backend);
        // A file named like the excluded folder's prefix still counts.
        std::fs::write(root.join("storefront-notes.md"), "x").unwrap();
        let with_notes = key(Some("storefront"));
        std::fs::write(root.join("storefront-notes.md"), "y").unwrap();
        assert_ne!(key(Some("storefront")), with_notes);
    }

    fn run(dir: &Path, args: &[&str]) {
        let status = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn commit(dir: &Path, files: &[(&str, &str)]) {
        for (path, text) in files {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        run(dir, &["add", "-A"]);
        run(dir, &["commit", "-q", "-m", "c"]);
    }

    #[test]
    fn a_component_s_tree_ignores_only_the_other_component() {
        let dir = tempfile::tempdir().unwrap();
        run(dir.path(), &["init", "-q"]);
        commit(
            dir.path(),
            &[
                ("medusa-config.js", "a"),
                ("storefront/app.js", "1"),
                ("shared/x.js", "1"),
            ],
        );
        let storefront = Path::new("storefront");
        let backend_before = tree(dir.path(), &[storefront]).unwrap();
        let whole_before = tree(dir.path(), &[]).unwrap();
        // Only the storefront changes: the backend's inputs do not.
        commit(dir.path(), &[("storefront/app.js", "2")]);
        assert_eq!(tree(dir.path(), &[storefront]).unwrap(), backend_before);
        assert_ne!(tree(dir.path(), &[]).unwrap(), whole_before);
        // Anything else changes them.
        commit(dir.path(), &[("shared/x.js", "2")]);
        assert_ne!(tree(dir.path(), &[storefront]).unwrap(), backend_before);
        // Nested exclusions, and the root, which excludes nothing.
        commit(
            dir.path(),
            &[("apps/storefront/page.js", "1"), ("apps/backend/a.js", "1")],
        );
        let nested = tree(dir.path(), &[Path::new("apps/storefront")]).unwrap();
        commit(dir.path(), &[("apps/storefront/page.js", "2")]);
        assert_eq!(
            tree(dir.path(), &[Path::new("apps/storefront")]).unwrap(),
            nested
        );
        assert_eq!(
            tree(dir.path(), &[Path::new(".")]).unwrap(),
            tree(dir.path(), &[]).unwrap()
        );
    }

    /// Issue 33: a component's key leaves out the workspace packages it does
    /// not depend on, through others too, so a change to one reaches only the
    /// components that use it.
    #[test]
    fn a_change_to_a_workspace_package_reaches_only_the_components_that_use_it() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path();
        run(src, &["init", "-q"]);
        let package = |name: &str, deps: &[&str]| {
            let deps: serde_json::Map<String, serde_json::Value> = deps
                .iter()
                .map(|dep| (dep.to_string(), serde_json::json!("workspace:*")))
                .collect();
            serde_json::json!({"name": name, "dependencies": deps}).to_string()
        };
        let (backend_pkg, storefront_pkg, ui_pkg, tokens_pkg, utils_pkg, docs_pkg) = (
            package("backend", &["@acme/utils", "@medusajs/medusa"]),
            package("storefront", &["@acme/ui", "next"]),
            package("@acme/ui", &["@acme/tokens"]),
            package("@acme/tokens", &[]),
            package("@acme/utils", &[]),
            package("@acme/docs", &[]),
        );
        commit(
            src,
            &[
                (
                    "package.json",
                    r#"{"private": true, "workspaces": ["apps/*", "packages/*", "tools/docs"]}"#,
                ),
                ("pnpm-lock.yaml", "lockfileVersion: '9.0'\n"),
                ("apps/backend/package.json", &backend_pkg),
                ("apps/storefront/package.json", &storefront_pkg),
                ("packages/ui/package.json", &ui_pkg),
                ("packages/ui/button.tsx", "1"),
                ("packages/tokens/package.json", &tokens_pkg),
                ("packages/tokens/colors.ts", "1"),
                ("packages/utils/package.json", &utils_pkg),
                ("packages/utils/money.ts", "1"),
                ("tools/docs/package.json", &docs_pkg),
            ],
        );
        let (backend, storefront) = (Path::new("apps/backend"), Path::new("apps/storefront"));
        assert_eq!(
            unrelated_packages(src, backend),
            [
                "apps/storefront",
                "packages/tokens",
                "packages/ui",
                "tools/docs"
            ]
            .map(std::path::PathBuf::from)
        );
        assert_eq!(
            unrelated_packages(src, storefront),
            ["apps/backend", "packages/utils", "tools/docs"].map(std::path::PathBuf::from)
        );
        assert!(unrelated_packages(src, Path::new("")).is_empty());
        let key = |own: &Path, other: &Path| {
            let unrelated = unrelated_packages(src, own);
            let mut excludes: Vec<&Path> = unrelated.iter().map(|dir| dir.as_path()).collect();
            excludes.push(other);
            tree(src, &excludes).unwrap()
        };
        let keys = || (key(backend, storefront), key(storefront, backend));
        let (backend_before, storefront_before) = keys();
        // A design token, two packages away from the storefront: only it.
        commit(src, &[("packages/tokens/colors.ts", "2")]);
        let (backend_now, storefront_now) = keys();
        assert_eq!(backend_now, backend_before);
        assert_ne!(storefront_now, storefront_before);
        // A money helper: only the backend.
        commit(src, &[("packages/utils/money.ts", "2")]);
        let (backend_after, storefront_after) = keys();
        assert_ne!(backend_after, backend_now);
        assert_eq!(storefront_after, storefront_now);
        // The docs: neither. The lockfile at the root: both.
        commit(src, &[("tools/docs/guide.md", "new")]);
        assert_eq!(keys(), (backend_after.clone(), storefront_after.clone()));
        commit(
            src,
            &[("pnpm-lock.yaml", "lockfileVersion: '9.0'\n# changed\n")],
        );
        let (backend_last, storefront_last) = keys();
        assert_ne!(backend_last, backend_after);
        assert_ne!(storefront_last, storefront_after);
    }

    #[test]
    fn keys_tell_fields_apart_and_ignore_variable_order() {
        let mut a = Key::new("k");
        a.text("x", "ab").text("y", "c");
        let mut b = Key::new("k");
        b.text("x", "a").text("y", "bc");
        assert_ne!(a.finish(), b.finish());
        let var = |name: &str, value: &str| EnvVar {
            name: name.into(),
            value: value.into(),
            secret: false,
        };
        let (mut one, mut two) = (Key::new("e"), Key::new("e"));
        add_env(&mut one, &[var("A", "1"), var("B", "2")]);
        add_env(&mut two, &[var("B", "2"), var("A", "1")]);
        assert_eq!(one.finish(), two.finish());
    }
}
