//! Reads of repository content on the build host. A checkout (and anything its
//! build left in it) is hostile: a file may be a link to a host file, a FIFO that
//! blocks a reader forever, or gigabytes long. Every read here takes regular files
//! only, inside the checkout (links are followed only while they stay inside), up
//! to a size cap, and never blocks on a special file.
//!
//! Paths in and out are relative to the checkout (`""` is its root), so messages
//! name them as the repository does. Nothing here writes.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

/// Largest `package.json` or JSON config read.
pub(crate) const JSON_LIMIT: u64 = 1 << 20;
/// Largest JavaScript/TypeScript/YAML config read (`next.config.*`, `.yarnrc.yml`).
pub(crate) const CONFIG_LIMIT: u64 = 256 << 10;
/// Largest one-line version file read (`.nvmrc`).
pub(crate) const VERSION_FILE_LIMIT: u64 = 1 << 10;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepoFsError {
    #[error("{path} links outside the repository; Kiln reads only files inside the checkout, so make it a file or a link within the repository")]
    Escapes { path: String },
    #[error("{path} is a {kind}, not a regular file; commit it as a file")]
    NotRegular { path: String, kind: &'static str },
    #[error(
        "{path} is larger than {limit} bytes, too large for a file Kiln reads to plan a build"
    )]
    TooLarge { path: String, limit: u64 },
    #[error("{path} is not a valid path inside the repository (absolute, or with `..`)")]
    Outside { path: String },
    #[error("cannot read {path}: {message}")]
    Io { path: String, message: String },
    #[error("{path} is not valid JSON (line {line}, column {column}): {message}")]
    InvalidJson {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
}

impl RepoFsError {
    pub fn code(&self) -> &'static str {
        match self {
            RepoFsError::Escapes { .. } => "link_outside_repository",
            RepoFsError::NotRegular { .. } => "not_a_regular_file",
            RepoFsError::TooLarge { .. } => "file_too_large",
            RepoFsError::Outside { .. } => "path_outside_repository",
            RepoFsError::Io { .. } => "unreadable_file",
            RepoFsError::InvalidJson { .. } => "invalid_package_json",
        }
    }
}

/// `path` as the repository names it: `/`-separated, `.` for the root.
pub(crate) fn shown(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        ".".to_owned()
    } else {
        path.display().to_string()
    }
}

/// Whether `path` is relative and stays inside whatever it is joined to: no root,
/// no `..`, no NUL.
pub(crate) fn is_inside_relative(path: &Path) -> bool {
    !path.as_os_str().as_encoded_bytes().contains(&0)
        && path
            .components()
            .all(|part| matches!(part, Component::Normal(_) | Component::CurDir))
}

/// Joins `rel` to `base` without `.` parts, so paths compare and print cleanly.
pub(crate) fn join(base: &Path, rel: &Path) -> PathBuf {
    let mut joined = base.to_owned();
    for part in rel.components() {
        if let Component::Normal(name) = part {
            joined.push(name);
        }
    }
    joined
}

#[derive(Debug, Clone)]
pub(crate) struct RepoFs {
    /// Canonical (no links), so a resolved path can be checked by prefix.
    root: PathBuf,
}

fn kind_of(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "directory"
    } else if file_type.is_fifo() {
        "FIFO"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_block_device() || file_type.is_char_device() {
        "device"
    } else if file_type.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    }
}

impl RepoFs {
    /// Opens the checkout at `root`, which must be a directory, not a link to one
    /// (a build could have swapped it for a link to the host's `/`).
    pub(crate) fn new(root: &Path) -> std::io::Result<RepoFs> {
        if std::fs::symlink_metadata(root)?.file_type().is_symlink() {
            return Err(std::io::Error::other(format!(
                "{} is a symbolic link, not the checkout",
                root.display()
            )));
        }
        Ok(RepoFs {
            root: root.canonicalize()?,
        })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Where `rel` is on the host, following links only while they stay inside;
    /// `Ok(None)` when nothing is there.
    fn resolve(&self, rel: &Path) -> Result<Option<PathBuf>, RepoFsError> {
        if !is_inside_relative(rel) {
            return Err(RepoFsError::Outside {
                path: rel.display().to_string(),
            });
        }
        match join(&self.root, rel).canonicalize() {
            Ok(real) if real.starts_with(&self.root) => Ok(Some(real)),
            Ok(_) => Err(RepoFsError::Escapes { path: shown(rel) }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            // A dangling link or a loop: nothing readable is there.
            Err(error) if error.raw_os_error() == Some(nix::libc::ELOOP) => Ok(None),
            Err(error) => Err(RepoFsError::Io {
                path: shown(rel),
                message: error.to_string(),
            }),
        }
    }

    /// Whether `rel` is a regular file inside the checkout.
    pub(crate) fn is_file(&self, rel: &Path) -> bool {
        matches!(self.resolve(rel), Ok(Some(real)) if std::fs::symlink_metadata(&real).is_ok_and(|m| m.is_file()))
    }

    /// Whether `rel` is a directory inside the checkout.
    pub(crate) fn is_dir(&self, rel: &Path) -> bool {
        matches!(self.resolve(rel), Ok(Some(real)) if std::fs::symlink_metadata(&real).is_ok_and(|m| m.is_dir()))
    }

    /// The text of a regular file inside the checkout, at most `limit` bytes;
    /// `Ok(None)` when there is none. Invalid UTF-8 is replaced, not refused.
    pub(crate) fn read(&self, rel: &Path, limit: u64) -> Result<Option<String>, RepoFsError> {
        Ok(self
            .read_bytes(rel, limit, true)?
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// The first `length` bytes of a regular file (for a format's magic line).
    pub(crate) fn read_prefix(
        &self,
        rel: &Path,
        length: u64,
    ) -> Result<Option<String>, RepoFsError> {
        Ok(self
            .read_bytes(rel, length, false)?
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    }

    fn read_bytes(
        &self,
        rel: &Path,
        limit: u64,
        whole: bool,
    ) -> Result<Option<Vec<u8>>, RepoFsError> {
        let Some(real) = self.resolve(rel)? else {
            return Ok(None);
        };
        let io = |error: std::io::Error| RepoFsError::Io {
            path: shown(rel),
            message: error.to_string(),
        };
        // O_NONBLOCK: opening a FIFO must not wait for a writer. O_NOFOLLOW: the
        // resolved path has no links; one appearing now is refused, not followed.
        let file = File::options()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOFOLLOW)
            .open(&real)
            .map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(RepoFsError::NotRegular {
                path: shown(rel),
                kind: kind_of(meta.file_type()),
            });
        }
        if whole && meta.len() > limit {
            return Err(RepoFsError::TooLarge {
                path: shown(rel),
                limit,
            });
        }
        let mut bytes = Vec::new();
        file.take(limit).read_to_end(&mut bytes).map_err(io)?;
        Ok(Some(bytes))
    }

    /// `rel/package.json`, parsed; `Ok(None)` when the directory has none.
    pub(crate) fn package_json(&self, dir: &Path) -> Result<Option<Value>, RepoFsError> {
        let path = join(dir, Path::new("package.json"));
        let Some(text) = self.read(&path, JSON_LIMIT)? else {
            return Ok(None);
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| RepoFsError::InvalidJson {
                path: shown(&path),
                line: e.line(),
                column: e.column(),
                message: e.to_string(),
            })
    }

    /// Directories directly under `rel` (inside the checkout, links to directories
    /// inside it included), sorted, as paths relative to the checkout.
    pub(crate) fn child_dirs(&self, rel: &Path) -> Vec<PathBuf> {
        let Ok(Some(real)) = self.resolve(rel) else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(real) else {
            return Vec::new();
        };
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|entry| join(rel, Path::new(&entry.file_name())))
            .filter(|dir| self.is_dir(dir))
            .collect();
        dirs.sort();
        dirs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> (tempfile::TempDir, RepoFs) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("repo/web")).unwrap();
        std::fs::write(dir.path().join("outside"), "host secret").unwrap();
        let fs = RepoFs::new(&dir.path().join("repo")).unwrap();
        (dir, fs)
    }

    #[test]
    fn files_inside_are_read_and_links_inside_followed() {
        let (_dir, fs) = repo();
        std::fs::write(fs.root().join("web/.nvmrc"), "20\n").unwrap();
        std::os::unix::fs::symlink("web/.nvmrc", fs.root().join(".nvmrc")).unwrap();
        assert_eq!(
            fs.read(Path::new(".nvmrc"), 16).unwrap().as_deref(),
            Some("20\n")
        );
        assert_eq!(fs.read(Path::new("missing"), 16).unwrap(), None);
        assert!(fs.is_dir(Path::new("web")) && !fs.is_file(Path::new("web")));
        assert_eq!(fs.child_dirs(Path::new("")), [PathBuf::from("web")]);
    }

    #[test]
    fn links_out_fifos_and_large_files_are_refused_by_name() {
        let (dir, fs) = repo();
        std::os::unix::fs::symlink(dir.path().join("outside"), fs.root().join("web/.nvmrc"))
            .unwrap();
        assert_eq!(
            fs.read(Path::new("web/.nvmrc"), 16).unwrap_err(),
            RepoFsError::Escapes {
                path: "web/.nvmrc".into()
            }
        );
        std::os::unix::fs::symlink("../../outside", fs.root().join("web/up")).unwrap();
        assert!(matches!(
            fs.read(Path::new("web/up"), 16),
            Err(RepoFsError::Escapes { .. })
        ));
        nix::unistd::mkfifo(
            &fs.root().join("package.json"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        // Returns at once rather than waiting for a writer.
        assert_eq!(
            fs.package_json(Path::new("")).unwrap_err(),
            RepoFsError::NotRegular {
                path: "package.json".into(),
                kind: "FIFO"
            }
        );
        std::fs::write(fs.root().join("big"), vec![b'x'; 100]).unwrap();
        assert!(matches!(
            fs.read(Path::new("big"), 99),
            Err(RepoFsError::TooLarge { limit: 99, .. })
        ));
        assert_eq!(
            fs.read_prefix(Path::new("big"), 3).unwrap().as_deref(),
            Some("xxx")
        );
        assert!(matches!(
            fs.read(Path::new("../outside"), 99),
            Err(RepoFsError::Outside { .. })
        ));
        assert!(!fs.is_file(Path::new("web/.nvmrc")));
    }
}
