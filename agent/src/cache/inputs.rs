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

/// The tree a component's build reads: the commit's whole tree, less `exclude`
/// (the other component's directory), as one hash. Excluding the root, or a
/// path the tree lacks, excludes nothing.
pub fn tree(src: &Path, exclude: Option<&Path>) -> std::io::Result<String> {
    let root = git(src, &["rev-parse", "HEAD^{tree}"])?.trim().to_owned();
    let parts: Vec<String> = exclude
        .map(|path| {
            path.components()
                .filter_map(|part| match part {
                    PathComponent::Normal(name) => Some(name.to_string_lossy().into_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if parts.is_empty() {
        return Ok(root);
    }
    tree_without(src, &root, &parts)
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

fn tree_without(src: &Path, tree: &str, exclude: &[String]) -> std::io::Result<String> {
    let listing = git(src, &["ls-tree", "-z", "--full-tree", tree])?;
    let mut key = Key::new("tree");
    for line in listing.split('\0').filter(|line| !line.is_empty()) {
        // `<mode> <type> <id>\t<name>`
        let Some((head, name)) = line.split_once('\t') else {
            continue;
        };
        if name == exclude[0] {
            let mut fields = head.split(' ');
            let (mode, kind, id) = (fields.next(), fields.next(), fields.next());
            if exclude.len() == 1 {
                continue;
            }
            if let (Some(mode), Some("tree"), Some(id)) = (mode, kind, id) {
                let inner = tree_without(src, id, &exclude[1..])?;
                key.text("entry", &format!("{mode} tree {inner}\t{name}"));
                continue;
            }
        }
        key.text("entry", line);
    }
    Ok(key.finish())
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
        let backend_before = tree(dir.path(), Some(storefront)).unwrap();
        let whole_before = tree(dir.path(), None).unwrap();
        // Only the storefront changes: the backend's inputs do not.
        commit(dir.path(), &[("storefront/app.js", "2")]);
        assert_eq!(tree(dir.path(), Some(storefront)).unwrap(), backend_before);
        assert_ne!(tree(dir.path(), None).unwrap(), whole_before);
        // Anything else changes them.
        commit(dir.path(), &[("shared/x.js", "2")]);
        assert_ne!(tree(dir.path(), Some(storefront)).unwrap(), backend_before);
        // Nested exclusions, and the root, which excludes nothing.
        commit(
            dir.path(),
            &[("apps/storefront/page.js", "1"), ("apps/backend/a.js", "1")],
        );
        let nested = tree(dir.path(), Some(Path::new("apps/storefront"))).unwrap();
        commit(dir.path(), &[("apps/storefront/page.js", "2")]);
        assert_eq!(
            tree(dir.path(), Some(Path::new("apps/storefront"))).unwrap(),
            nested
        );
        assert_eq!(
            tree(dir.path(), Some(Path::new("."))).unwrap(),
            tree(dir.path(), None).unwrap()
        );
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
