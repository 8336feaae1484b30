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
        let me = nix::unistd::getuid().as_raw();
        if me == user.uid {
            return Ok(());
        }
        let (uid, gid) = (
            Some(nix::unistd::Uid::from_raw(user.uid)),
            Some(nix::unistd::Gid::from_raw(user.gid)),
        );
        for entry in walkdir::WalkDir::new(self.build_dir()).follow_links(false) {
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
