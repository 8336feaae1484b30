//! Reading and writing under a root that a build container can change while the
//! agent works there: the workspace a restore writes into, the workspace a
//! harvest takes from. Every component below the root is opened without
//! following a link (`O_NOFOLLOW`), and everything after is done through the
//! handle, so a link planted at any level, before or during the work, never
//! redirects a read or a write out of the root.
//!
//! Leaves out: following links that stay inside (nothing here needs to); the
//! root itself is the caller's, made by the agent, and trusted.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};

/// Deeper than any install or cache nests; a build that nests further is
/// trying to exhaust the agent's descriptors or stack.
const MAX_DEPTH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum BeneathError {
    #[error("{path} is a symbolic link, and the agent never follows a link a build made")]
    Link { path: String },
    #[error("{path} is not a directory")]
    NotDirectory { path: String },
    #[error("{path} does not exist")]
    Missing { path: String },
    #[error("{path} is there already")]
    Exists { path: String },
    #[error("{path} nests more than {MAX_DEPTH} directories deep")]
    TooDeep { path: String },
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
}

impl From<BeneathError> for io::Error {
    fn from(error: BeneathError) -> io::Error {
        io::Error::other(error.to_string())
    }
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

fn io_at(path: &Path) -> impl Fn(Errno) -> BeneathError + '_ {
    move |errno| BeneathError::Io {
        path: shown(path),
        source: io::Error::from(errno),
    }
}

/// The normal components of `rel`: `..`, `.` and a leading `/` are dropped, as
/// the callers' paths are relative already and must never climb.
fn parts(rel: &Path) -> impl Iterator<Item = &OsStr> {
    rel.components().filter_map(|part| match part {
        Component::Normal(name) => Some(name),
        _ => None,
    })
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

fn open_root(root: &Path) -> Result<OwnedFd, BeneathError> {
    nix::fcntl::open(root, DIR_FLAGS, Mode::empty()).map_err(io_at(root))
}

/// Opens the directory `name` in `dir` without following a link; `shown` names
/// it in errors.
fn open_child_dir(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    shown_as: &Path,
) -> Result<OwnedFd, BeneathError> {
    match nix::fcntl::openat(dir, name, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(Errno::ENOENT) => Err(BeneathError::Missing {
            path: shown(shown_as),
        }),
        // O_NOFOLLOW on a link: ELOOP; O_DIRECTORY on anything else: ENOTDIR.
        Err(Errno::ELOOP) => Err(BeneathError::Link {
            path: shown(shown_as),
        }),
        Err(Errno::ENOTDIR) => match lstat_at(dir, name) {
            Ok(stat) if kind(&stat) == SFlag::S_IFLNK => Err(BeneathError::Link {
                path: shown(shown_as),
            }),
            _ => Err(BeneathError::NotDirectory {
                path: shown(shown_as),
            }),
        },
        Err(errno) => Err(io_at(shown_as)(errno)),
    }
}

fn lstat_at(dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<FileStat> {
    nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
}

fn kind(stat: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT
}

/// Opens the directory `rel` under `root`, one component at a time, refusing a
/// link at any level.
pub fn open_dir(root: &Path, rel: &Path) -> Result<OwnedFd, BeneathError> {
    let mut dir = open_root(root)?;
    let mut at = PathBuf::new();
    for name in parts(rel) {
        at.push(name);
        dir = open_child_dir(dir.as_fd(), name, &at)?;
    }
    Ok(dir)
}

/// Checks that `rel` under `root` can be created: each existing component is a
/// real directory and the last does not exist yet.
pub fn vacant(root: &Path, rel: &Path) -> Result<(), BeneathError> {
    let (parent, name) = split(rel)?;
    let dir = match open_dir(root, parent) {
        Ok(dir) => dir,
        Err(BeneathError::Missing { .. }) => return Ok(()),
        Err(error) => return Err(error),
    };
    match lstat_at(dir.as_fd(), name) {
        Err(Errno::ENOENT) => Ok(()),
        Ok(stat) if kind(&stat) == SFlag::S_IFLNK => Err(BeneathError::Link { path: shown(rel) }),
        Ok(_) => Err(BeneathError::Exists { path: shown(rel) }),
        Err(errno) => Err(io_at(rel)(errno)),
    }
}

fn split(rel: &Path) -> Result<(&Path, &OsStr), BeneathError> {
    match (rel.parent(), rel.file_name()) {
        (Some(parent), Some(name)) => Ok((parent, name)),
        _ => Err(BeneathError::NotDirectory { path: shown(rel) }),
    }
}

/// Who the directories and copies made for a build belong to, when the agent
/// is someone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    fn give(self, fd: BorrowedFd<'_>) -> nix::Result<()> {
        nix::unistd::fchown(
            fd,
            Some(nix::unistd::Uid::from_raw(self.uid)),
            Some(nix::unistd::Gid::from_raw(self.gid)),
        )
    }
}

/// Opens the directory `rel` under `root`, creating what is missing (mode 0755,
/// given to `owner`), refusing a link at any level.
pub fn make_dirs(root: &Path, rel: &Path, owner: Option<Owner>) -> Result<OwnedFd, BeneathError> {
    let mut dir = open_root(root)?;
    let mut at = PathBuf::new();
    for name in parts(rel) {
        at.push(name);
        dir = match open_child_dir(dir.as_fd(), name, &at) {
            Err(BeneathError::Missing { .. }) => make_child_dir(
                dir.as_fd(),
                name,
                &at,
                Mode::from_bits_truncate(0o755),
                owner,
            )?,
            opened => opened?,
        };
    }
    Ok(dir)
}

/// Makes the directory `name` in `dir` and opens it; it must not exist.
fn make_child_dir(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    shown_as: &Path,
    mode: Mode,
    owner: Option<Owner>,
) -> Result<OwnedFd, BeneathError> {
    match nix::sys::stat::mkdirat(dir, name, mode) {
        Ok(()) => {}
        Err(Errno::EEXIST) => {
            return Err(match lstat_at(dir, name) {
                Ok(stat) if kind(&stat) == SFlag::S_IFLNK => BeneathError::Link {
                    path: shown(shown_as),
                },
                _ => BeneathError::Exists {
                    path: shown(shown_as),
                },
            })
        }
        Err(errno) => return Err(io_at(shown_as)(errno)),
    }
    let made = open_child_dir(dir, name, shown_as)?;
    if let Some(owner) = owner {
        owner.give(made.as_fd()).map_err(io_at(shown_as))?;
    }
    Ok(made)
}

/// How `copy` makes the files of a tree.
#[derive(Debug, Clone, Copy)]
pub struct CopyMode {
    /// Hard links to the source's files (read-only there), else copies.
    pub link_files: bool,
    /// Directories, and copied files, given to this owner.
    pub owner: Option<Owner>,
    /// Copied files writable by their owner (a build's own copy).
    pub writable: bool,
}

/// Copies the directory tree `from` (the agent's own, trusted) as `rel` under
/// `root`, which must not exist yet; its parents are made as `make_dirs` does.
/// Links in the tree are made again as links, never followed; other special
/// files are left out.
pub fn copy_in(from: &Path, root: &Path, rel: &Path, mode: CopyMode) -> Result<(), BeneathError> {
    let source = open_root(from)?;
    let (parent, name) = split(rel)?;
    let parent_fd = make_dirs(root, parent, mode.owner)?;
    let dir_mode = nix::sys::stat::fstat(source.as_fd())
        .map(|stat| Mode::from_bits_truncate(stat.st_mode & 0o777))
        .map_err(io_at(from))?;
    let dest = make_child_dir(parent_fd.as_fd(), name, rel, dir_mode, mode.owner)?;
    copy_tree(source.as_fd(), dest.as_fd(), rel, mode, 0)
}

/// The names in `dir`, less `.` and `..`, sorted.
fn names(dir: BorrowedFd<'_>, shown_as: &Path) -> Result<Vec<OsString>, BeneathError> {
    let mut listing =
        nix::dir::Dir::openat(dir, ".", DIR_FLAGS, Mode::empty()).map_err(io_at(shown_as))?;
    let mut names = Vec::new();
    for entry in listing.iter() {
        let entry = entry.map_err(io_at(shown_as))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_owned());
        }
    }
    names.sort();
    Ok(names)
}

fn copy_tree(
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    shown_as: &Path,
    mode: CopyMode,
    depth: usize,
) -> Result<(), BeneathError> {
    if depth > MAX_DEPTH {
        return Err(BeneathError::TooDeep {
            path: shown(shown_as),
        });
    }
    for name in names(from, shown_as)? {
        let at = shown_as.join(&name);
        let stat = match lstat_at(from, &name) {
            Ok(stat) => stat,
            Err(Errno::ENOENT) => continue,
            Err(errno) => return Err(io_at(&at)(errno)),
        };
        match kind(&stat) {
            SFlag::S_IFDIR => {
                let source = open_child_dir(from, &name, &at)?;
                let made = make_child_dir(
                    to,
                    &name,
                    &at,
                    Mode::from_bits_truncate(stat.st_mode & 0o777),
                    mode.owner,
                )?;
                copy_tree(source.as_fd(), made.as_fd(), &at, mode, depth + 1)?;
                keep_times(made.as_fd(), &stat);
            }
            SFlag::S_IFLNK => {
                let target = nix::fcntl::readlinkat(from, name.as_os_str()).map_err(io_at(&at))?;
                nix::unistd::symlinkat(target.as_os_str(), to, name.as_os_str())
                    .map_err(io_at(&at))?;
            }
            SFlag::S_IFREG if mode.link_files => {
                nix::unistd::linkat(
                    from,
                    name.as_os_str(),
                    to,
                    name.as_os_str(),
                    AtFlags::empty(),
                )
                .map_err(io_at(&at))?;
            }
            SFlag::S_IFREG => copy_file(from, to, &name, &name, &at, &stat, mode)?,
            // FIFOs, sockets and devices: nothing a cache or a restore needs.
            _ => {}
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn copy_file(
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    name: &OsStr,
    to_name: &OsStr,
    shown_as: &Path,
    stat: &FileStat,
    mode: CopyMode,
) -> Result<(), BeneathError> {
    let source = nix::fcntl::openat(
        from,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_at(shown_as))?;
    // Never setuid or setgid; writable when it is the build's own copy.
    let mut bits = stat.st_mode & 0o777;
    if mode.writable {
        bits |= 0o200;
    }
    let dest = nix::fcntl::openat(
        to,
        to_name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(bits),
    )
    .map_err(io_at(shown_as))?;
    let (mut source, mut dest) = (std::fs::File::from(source), std::fs::File::from(dest));
    io::copy(&mut source, &mut dest).map_err(|source| BeneathError::Io {
        path: shown(shown_as),
        source,
    })?;
    if let Some(owner) = mode.owner {
        owner.give(dest.as_fd()).map_err(io_at(shown_as))?;
    }
    // The umask may have taken bits the copy should keep.
    nix::sys::stat::fchmod(dest.as_fd(), Mode::from_bits_truncate(bits))
        .map_err(io_at(shown_as))?;
    keep_times(dest.as_fd(), stat);
    Ok(())
}

/// Gives a copy its source's times, as `cp -a` does: tools compare them.
fn keep_times(fd: BorrowedFd<'_>, stat: &FileStat) {
    use nix::sys::time::TimeSpec;
    let atime = TimeSpec::new(stat.st_atime, stat.st_atime_nsec);
    let mtime = TimeSpec::new(stat.st_mtime, stat.st_mtime_nsec);
    let _ = nix::sys::stat::futimens(fd, &atime, &mtime);
}

/// Moves the directory or file `rel` under `root` to `to` (the agent's own
/// place, whose parent exists), refusing a link at any level of `rel`. Across
/// file systems it is copied, and the source left for the workspace's removal.
pub fn move_out(root: &Path, rel: &Path, to: &Path) -> Result<(), BeneathError> {
    let (parent, name) = split(rel)?;
    let parent_fd = open_dir(root, parent)?;
    let stat = match lstat_at(parent_fd.as_fd(), name) {
        Ok(stat) => stat,
        Err(Errno::ENOENT) => return Err(BeneathError::Missing { path: shown(rel) }),
        Err(errno) => return Err(io_at(rel)(errno)),
    };
    let is_dir = match kind(&stat) {
        SFlag::S_IFDIR => true,
        SFlag::S_IFREG => false,
        SFlag::S_IFLNK => return Err(BeneathError::Link { path: shown(rel) }),
        _ => return Err(BeneathError::NotDirectory { path: shown(rel) }),
    };
    // Held from here on: a swap of `name` after this point moves nothing else.
    let source = if is_dir {
        Some(open_child_dir(parent_fd.as_fd(), name, rel)?)
    } else {
        None
    };
    match nix::fcntl::renameat(parent_fd.as_fd(), name, nix::fcntl::AT_FDCWD, to) {
        Ok(()) => Ok(()),
        Err(Errno::EXDEV) => {
            let (to_parent, to_name) = split(to)?;
            let to_parent = open_root(to_parent)?;
            let mode = CopyMode {
                link_files: false,
                owner: None,
                writable: false,
            };
            match source {
                Some(source) => {
                    let made = make_child_dir(
                        to_parent.as_fd(),
                        to_name,
                        to,
                        Mode::from_bits_truncate(0o755),
                        None,
                    )?;
                    copy_tree(source.as_fd(), made.as_fd(), rel, mode, 0)
                }
                None => copy_file(
                    parent_fd.as_fd(),
                    to_parent.as_fd(),
                    name,
                    to_name,
                    rel,
                    &stat,
                    mode,
                ),
            }
        }
        Err(errno) => Err(io_at(rel)(errno)),
    }
}

/// Removes `rel` under `root` and all below it, never following a link; a
/// missing `rel` (or parent) is no error.
pub fn remove(root: &Path, rel: &Path) -> Result<(), BeneathError> {
    let (parent, name) = split(rel)?;
    let parent_fd = match open_dir(root, parent) {
        Ok(dir) => dir,
        Err(BeneathError::Missing { .. }) => return Ok(()),
        Err(error) => return Err(error),
    };
    remove_at(parent_fd.as_fd(), name, rel, 0)
}

fn remove_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    shown_as: &Path,
    depth: usize,
) -> Result<(), BeneathError> {
    let stat = match lstat_at(dir, name) {
        Ok(stat) => stat,
        Err(Errno::ENOENT) => return Ok(()),
        Err(errno) => return Err(io_at(shown_as)(errno)),
    };
    if kind(&stat) == SFlag::S_IFDIR {
        if depth > MAX_DEPTH {
            return Err(BeneathError::TooDeep {
                path: shown(shown_as),
            });
        }
        let child = open_child_dir(dir, name, shown_as)?;
        for entry in names(child.as_fd(), shown_as)? {
            remove_at(child.as_fd(), &entry, &shown_as.join(&entry), depth + 1)?;
        }
        nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::RemoveDir)
    } else {
        nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir)
    }
    .or_else(|errno| {
        if errno == Errno::ENOENT {
            Ok(())
        } else {
            Err(errno)
        }
    })
    .map_err(io_at(shown_as))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn tree(dir: &Path) {
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/b/file"), "content").unwrap();
        std::fs::set_permissions(dir.join("a/b/file"), std::fs::Permissions::from_mode(0o444))
            .unwrap();
        symlink("b/file", dir.join("a/inside")).unwrap();
        symlink("/etc/passwd", dir.join("a/outside")).unwrap();
    }

    #[test]
    fn a_link_at_any_level_is_refused_by_name() {
        let root = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("src/app")).unwrap();
        symlink(host.path(), root.path().join("home")).unwrap();
        symlink(host.path(), root.path().join("src/app/node_modules")).unwrap();
        for rel in [
            "home",
            "home/.npm",
            "src/app/node_modules",
            "src/app/node_modules/x",
        ] {
            let error = open_dir(root.path(), Path::new(rel)).unwrap_err();
            assert!(
                matches!(&error, BeneathError::Link { .. }),
                "{rel}: {error}"
            );
            let error = make_dirs(root.path(), Path::new(rel), None).unwrap_err();
            assert!(
                matches!(&error, BeneathError::Link { .. }),
                "{rel}: {error}"
            );
        }
        assert_eq!(
            open_dir(root.path(), Path::new("home/.npm"))
                .unwrap_err()
                .to_string(),
            "home is a symbolic link, and the agent never follows a link a build made"
        );
        assert!(matches!(
            vacant(root.path(), Path::new("home/.npm/_cacache")),
            Err(BeneathError::Link { .. })
        ));
        assert!(vacant(root.path(), Path::new("src/app/.next/cache")).is_ok());
        assert!(matches!(
            vacant(root.path(), Path::new("src/app")),
            Err(BeneathError::Exists { .. })
        ));
        assert_eq!(std::fs::read_dir(host.path()).unwrap().count(), 0);
    }

    #[test]
    fn copies_and_links_keep_links_as_links_and_write_only_beneath() {
        let cache = tempfile::tempdir().unwrap();
        tree(cache.path());
        let root = tempfile::tempdir().unwrap();
        let copy = CopyMode {
            link_files: false,
            owner: None,
            writable: true,
        };
        copy_in(
            cache.path(),
            root.path(),
            Path::new("src/x/node_modules"),
            copy,
        )
        .unwrap();
        let copied = root.path().join("src/x/node_modules/a/b/file");
        assert_eq!(std::fs::read_to_string(&copied).unwrap(), "content");
        assert_eq!(
            std::fs::metadata(&copied).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(
            std::fs::read_link(root.path().join("src/x/node_modules/a/outside")).unwrap(),
            Path::new("/etc/passwd")
        );
        // There already: refused, nothing changed.
        assert!(matches!(
            copy_in(
                cache.path(),
                root.path(),
                Path::new("src/x/node_modules"),
                copy
            ),
            Err(BeneathError::Exists { .. })
        ));
        let linked = CopyMode {
            link_files: true,
            owner: None,
            writable: false,
        };
        copy_in(cache.path(), root.path(), Path::new("home/.npm"), linked).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(root.path().join("home/.npm/a/b/file"))
                .unwrap()
                .ino(),
            std::fs::metadata(cache.path().join("a/b/file"))
                .unwrap()
                .ino()
        );
        // A planted link at the destination's parent is never written through.
        let host = tempfile::tempdir().unwrap();
        std::fs::remove_dir_all(root.path().join("home")).unwrap();
        symlink(host.path(), root.path().join("home")).unwrap();
        assert!(matches!(
            copy_in(cache.path(), root.path(), Path::new("home/.npm"), linked),
            Err(BeneathError::Link { .. })
        ));
        assert_eq!(std::fs::read_dir(host.path()).unwrap().count(), 0);
    }

    #[test]
    fn moves_and_removals_never_take_what_a_link_points_at() {
        let root = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(host.path().join("_cacache")).unwrap();
        std::fs::write(host.path().join("_cacache/secret"), "root only").unwrap();
        std::fs::create_dir_all(root.path().join("home")).unwrap();
        symlink(host.path(), root.path().join("home/.npm")).unwrap();
        let out = tempfile::tempdir().unwrap();
        let error = move_out(
            root.path(),
            Path::new("home/.npm/_cacache"),
            &out.path().join("store"),
        )
        .unwrap_err();
        assert!(
            matches!(&error, BeneathError::Link { path } if path == "home/.npm"),
            "{error}"
        );
        assert!(remove(root.path(), Path::new("home/.npm/_cacache")).is_err());
        assert!(host.path().join("_cacache/secret").exists());

        tree(&root.path().join("src/node_modules"));
        move_out(
            root.path(),
            Path::new("src/node_modules"),
            &out.path().join("deps"),
        )
        .unwrap();
        assert!(out.path().join("deps/a/b/file").exists());
        assert!(!root.path().join("src/node_modules").exists());
        tree(&root.path().join("src/node_modules"));
        remove(root.path(), Path::new("src/node_modules")).unwrap();
        assert!(!root.path().join("src/node_modules").exists());
        assert!(std::fs::metadata("/etc/passwd").is_ok());
        remove(root.path(), Path::new("missing/x")).unwrap();
    }
}
