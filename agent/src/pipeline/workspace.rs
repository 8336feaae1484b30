//! A job's directories on the build host, and the host-side work on them before
//! any container runs: creating them, copying a local project in (`kiln-agent
//! build`), and handing the build tree to the build uid.

use std::path::{Path, PathBuf};

use crate::config::UidGid;

/// A job's directories: `build/` is the only thing containers see (at `/kiln`),
/// holding `src/` (the checkout) and `home/`; `artifacts/` stays outside their reach.
#[derive(Debug, Clone)]
pub struct Workspace {
    pub root: PathBuf,
}

impl Workspace {
    pub fn new(work_dir: &Path, job_id: &str) -> Workspace {
        Workspace {
            root: work_dir.join(job_id),
        }
    }
    pub fn build_dir(&self) -> PathBuf {
        self.root.join("build")
    }
    pub fn src(&self) -> PathBuf {
        self.build_dir().join("src")
    }
    pub fn artifacts(&self) -> PathBuf {
        self.root.join("artifacts")
    }

    pub(super) fn prepare(&self) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)?;
        std::fs::create_dir_all(self.build_dir().join("home"))?;
        std::fs::create_dir_all(self.artifacts())?;
        Ok(())
    }

    /// When the agent runs as root, builds run as `build_user`: the tree they write
    /// must be theirs. `artifacts/` stays the agent's.
    pub(super) fn hand_over(&self, user: UidGid) -> std::io::Result<()> {
        hand_over_tree(&self.build_dir(), user)
    }
}

/// Gives `dir` and everything under it to `user` (links themselves, never
/// what they point to), when the agent is not `user` already.
pub(super) fn hand_over_tree(dir: &Path, user: UidGid) -> std::io::Result<()> {
    {
        let me = nix::unistd::getuid().as_raw();
        if me == user.uid {
            return Ok(());
        }
        let (uid, gid) = (
            Some(nix::unistd::Uid::from_raw(user.uid)),
            Some(nix::unistd::Gid::from_raw(user.gid)),
        );
        for entry in walkdir::WalkDir::new(dir).follow_links(false) {
            let entry = entry.map_err(std::io::Error::other)?;
            nix::unistd::fchownat(
                nix::fcntl::AT_FDCWD,
                entry.path(),
                uid,
                gid,
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(std::io::Error::from)?;
        }
        Ok(())
    }
}

/// Why a build output directory cannot be packed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OutputError {
    #[error("{path} does not exist")]
    Missing { path: String },
    #[error("{path} is a symbolic link (to {target}); build output must be a real directory inside the workspace, so a link is never followed out of it")]
    Link { path: String, target: String },
    #[error("{path} is not a directory")]
    NotDirectory { path: String },
}

/// The build output directory `rel` (relative to the checkout), found by walking
/// down from the build directory one component at a time: the build wrote these,
/// and a symbolic link at any level would pack or scan whatever it points at.
pub(crate) fn output_dir(workspace: &Workspace, rel: &Path) -> Result<PathBuf, OutputError> {
    let mut path = workspace.build_dir();
    let mut shown = PathBuf::new();
    let parts =
        std::iter::once(std::ffi::OsStr::new("src")).chain(rel.components().filter_map(|part| {
            match part {
                std::path::Component::Normal(name) => Some(name),
                _ => None,
            }
        }));
    for (index, name) in parts.enumerate() {
        path.push(name);
        // Messages name paths as the repository does: without `src/`.
        if index > 0 {
            shown.push(name);
        }
        let shown_path = || crate::repo_fs::shown(&shown);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(_) => return Err(OutputError::Missing { path: shown_path() }),
        };
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path)
                .map(|target| target.display().to_string())
                .unwrap_or_default();
            return Err(OutputError::Link {
                path: shown_path(),
                target,
            });
        }
        if !meta.is_dir() {
            return Err(OutputError::NotDirectory { path: shown_path() });
        }
    }
    Ok(path)
}

/// Copies a local project, leaving out what a build recreates.
pub(super) fn copy_tree(from: &Path, to: &Path) -> std::io::Result<u64> {
    const SKIP: &[&str] = &["node_modules", ".git", ".medusa", ".next"];
    let mut files = 0;
    let walker = walkdir::WalkDir::new(from)
        .follow_links(false)
        .into_iter()
        .filter_entry(|entry| {
            entry.depth() == 0 || !SKIP.iter().any(|skip| entry.file_name() == *skip)
        });
    for entry in walker {
        let entry = entry.map_err(std::io::Error::other)?;
        let dest = to.join(
            entry
                .path()
                .strip_prefix(from)
                .expect("walk stays under root"),
        );
        let kind = entry.file_type();
        if kind.is_dir() {
            std::fs::create_dir_all(&dest)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest)?;
            files += 1;
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_dirs_are_found_without_following_any_link() {
        let dir = tempfile::tempdir().unwrap();
        let workspace = Workspace::new(dir.path(), "job");
        std::fs::create_dir_all(workspace.src().join("apps/backend/.medusa/server")).unwrap();
        std::fs::create_dir_all(dir.path().join("host-state")).unwrap();
        let rel = Path::new("apps/backend/.medusa/server");
        assert_eq!(
            output_dir(&workspace, rel).unwrap(),
            workspace.src().join(rel)
        );
        std::fs::remove_dir(workspace.src().join(rel)).unwrap();
        std::os::unix::fs::symlink(dir.path().join("host-state"), workspace.src().join(rel))
            .unwrap();
        assert!(matches!(
            output_dir(&workspace, rel),
            Err(OutputError::Link { path, .. }) if path == "apps/backend/.medusa/server"
        ));
        // A link higher up is refused as well, by its own name.
        std::fs::rename(workspace.src().join("apps"), dir.path().join("apps")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("apps"), workspace.src().join("apps")).unwrap();
        assert!(matches!(
            output_dir(&workspace, rel),
            Err(OutputError::Link { path, .. }) if path == "apps"
        ));
        assert!(matches!(
            output_dir(&workspace, Path::new("missing")),
            Err(OutputError::Missing { .. })
        ));
    }
}
