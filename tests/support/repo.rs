//! A git repository on disk made from `examples/medusa-shop`, which the agent
//! clones over `file://` like any remote.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct FixtureRepo {
    pub dir: PathBuf,
    pub url: String,
}

fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Ada")
        .env("GIT_AUTHOR_EMAIL", "ada@example.com")
        .env("GIT_COMMITTER_NAME", "Ada")
        .env("GIT_COMMITTER_EMAIL", "ada@example.com")
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// Copies `from` into `to`, less its node_modules, `.medusa` and the top-level
/// entries named in `skip`.
pub fn copy_dir(from: &Path, to: &Path, skip: &[&str]) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if skip.iter().any(|name| entry.file_name() == *name) {
            continue;
        }
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            if entry.file_name() != "node_modules" && entry.file_name() != ".medusa" {
                copy_dir(&entry.path(), &dest, &[]);
            }
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// `examples/medusa-shop`: a backend at the root, a storefront in `storefront/`.
pub fn example_shop() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/medusa-shop")
}

impl FixtureRepo {
    /// A repository of `examples/medusa-shop`'s backend alone: a top-level
    /// `storefront/` would be found and built beside it.
    pub fn new(root: &Path) -> FixtureRepo {
        Self::of_except(root, &example_shop(), &["storefront"])
    }

    /// A repository of all of `examples/medusa-shop`.
    pub fn with_storefront(root: &Path) -> FixtureRepo {
        Self::of(root, &example_shop())
    }

    /// A repository of any project directory (without its node_modules and .medusa).
    pub fn of(root: &Path, project: &Path) -> FixtureRepo {
        Self::of_except(root, project, &[])
    }

    fn of_except(root: &Path, project: &Path, skip: &[&str]) -> FixtureRepo {
        let dir = root.join("repo");
        copy_dir(project, &dir, skip);
        git(&dir, &["init", "-q", "-b", "main"]);
        git(&dir, &["add", "-A"]);
        git(&dir, &["commit", "-q", "-m", "Initial shop"]);
        let url = format!("file://{}", dir.display());
        FixtureRepo { dir, url }
    }

    /// Changes the tree and commits; returns the new commit id.
    pub fn commit(&self, message: &str, change: impl FnOnce(&Path)) -> String {
        change(&self.dir);
        git(&self.dir, &["add", "-A"]);
        git(&self.dir, &["commit", "-q", "--allow-empty", "-m", message]);
        self.head()
    }

    pub fn head(&self) -> String {
        git(&self.dir, &["rev-parse", "HEAD"])
    }
}
