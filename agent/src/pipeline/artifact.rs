//! Packs a build output directory as tar.gz, streamed from disk to disk while its
//! size and sha256 are computed: no whole archive in memory.
//!
//! File modes are kept. A symlink is kept as a link only when it points inside the
//! directory; one that leaves it fails the pack, naming the link, so a host file is
//! never archived.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Component, Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};
use walkdir::WalkDir;

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{dir} does not exist")]
    Missing { dir: String },
    #[error("symlink {link} points outside {dir} (to {target}); artifacts never include host files, so the build output must not link outside itself")]
    SymlinkEscapes {
        link: String,
        dir: String,
        target: String,
    },
    #[error("cannot pack {path}: {source}")]
    Io { path: String, source: io::Error },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
    pub files: u64,
}

struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Where `target`, a link inside `link_dir`, resolves to, lexically; `None` if it
/// climbs above `root`.
fn resolve_inside(root: &Path, link_dir: &Path, target: &Path) -> Option<PathBuf> {
    if target.is_absolute() {
        return None;
    }
    let mut resolved = link_dir.strip_prefix(root).ok()?.to_owned();
    for part in target.components() {
        match part {
            Component::Normal(name) => resolved.push(name),
            Component::CurDir => {}
            Component::ParentDir => {
                if !resolved.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(resolved)
}

/// Packs `dir` into `out` (entries relative to `dir`).
pub fn pack(dir: &Path, out: &Path) -> Result<Packed, PackError> {
    pack_except(dir, out, &[])
}

/// Packs `dir` into `out`, leaving out the top-level entries named in `skip`
/// (e.g. Next.js's `cache`, which is for the next build, not for deploying).
pub fn pack_except(dir: &Path, out: &Path, skip: &[&str]) -> Result<Packed, PackError> {
    pack_top_level(dir, out, |name| {
        !skip.iter().any(|skipped| name == *skipped)
    })
}

fn pack_top_level(
    dir: &Path,
    out: &Path,
    include: impl Fn(&std::ffi::OsStr) -> bool,
) -> Result<Packed, PackError> {
    let (hashing, files) = pack_into(
        dir,
        out,
        include,
        |hashing| GzEncoder::new(hashing, Compression::default()),
        |encoder| encoder.finish(),
    )?;
    finish(out, hashing, files)
}

/// Packs only the top-level entries of `dir` named in `keep` as a plain tar:
/// a release image's dependency layer, which goes to the local engine at
/// once, where gzip would cost more than it saves.
pub fn pack_only(dir: &Path, out: &Path, keep: &[&str]) -> Result<Packed, PackError> {
    let (hashing, files) = pack_into(
        dir,
        out,
        |name| keep.iter().any(|kept| name == *kept),
        |hashing| hashing,
        Ok,
    )?;
    finish(out, hashing, files)
}

type Sink = Hashing<BufWriter<File>>;

/// Walks `dir` into a tar written through `wrap` (gzip or none); `unwrap`
/// ends that writer and gives back the hashing one, with the files packed.
fn pack_into<W: Write>(
    dir: &Path,
    out: &Path,
    include: impl Fn(&std::ffi::OsStr) -> bool,
    wrap: impl FnOnce(Sink) -> W,
    unwrap: impl FnOnce(W) -> io::Result<Sink>,
) -> Result<(Sink, u64), PackError> {
    let io_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| PackError::Io { path, source }
    };
    if !dir.is_dir() {
        return Err(PackError::Missing {
            dir: dir.display().to_string(),
        });
    }
    let file = File::create(out).map_err(io_err(out))?;
    let hashing = Hashing {
        inner: BufWriter::with_capacity(256 * 1024, file),
        hasher: Sha256::new(),
        written: 0,
    };
    let mut builder = tar::Builder::new(wrap(hashing));
    builder.follow_symlinks(false);
    let mut files = 0;
    let walker = WalkDir::new(dir)
        .follow_links(false)
        .sort_by_file_name()
        .min_depth(1)
        .into_iter()
        .filter_entry(|entry| entry.depth() != 1 || include(entry.file_name()));
    for entry in walker {
        let entry = entry.map_err(|e| PackError::Io {
            path: e
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            source: e
                .into_io_error()
                .unwrap_or_else(|| io::Error::other("walk failed")),
        })?;
        let path = entry.path();
        let name = path
            .strip_prefix(dir)
            .expect("walkdir stays under its root");
        if entry.path_is_symlink() {
            let target = std::fs::read_link(path).map_err(io_err(path))?;
            let parent = path.parent().unwrap_or(dir);
            if resolve_inside(dir, parent, &target).is_none() {
                return Err(PackError::SymlinkEscapes {
                    link: name.display().to_string(),
                    dir: dir.display().to_string(),
                    target: target.display().to_string(),
                });
            }
        }
        builder
            .append_path_with_name(path, name)
            .map_err(io_err(path))?;
        if entry.file_type().is_file() {
            files += 1;
        }
    }
    let writer = builder.into_inner().map_err(io_err(out))?;
    let hashing = unwrap(writer).map_err(io_err(out))?;
    Ok((hashing, files))
}

fn finish(out: &Path, mut hashing: Sink, files: u64) -> Result<Packed, PackError> {
    let io_err = |source| PackError::Io {
        path: out.display().to_string(),
        source,
    };
    hashing.flush().map_err(io_err)?;
    let file = hashing
        .inner
        .into_inner()
        .map_err(|e| io_err(e.into_error()))?;
    file.sync_all().map_err(io_err)?;
    Ok(Packed {
        path: out.to_owned(),
        size: hashing.written,
        sha256: hex::encode(hashing.hasher.finalize()),
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn packs_files_modes_and_inside_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("server");
        std::fs::create_dir_all(root.join("public/admin")).unwrap();
        std::fs::write(root.join("medusa-config.js"), "module.exports = {}").unwrap();
        std::fs::write(root.join("public/admin/index.html"), "<html>").unwrap();
        std::fs::write(root.join("start.sh"), "#!/bin/sh").unwrap();
        std::fs::set_permissions(
            root.join("start.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("public/admin/index.html", root.join("index.html")).unwrap();
        let out = dir.path().join("backend.tar.gz");
        let packed = pack(&root, &out).unwrap();
        assert_eq!(packed.files, 3);
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(packed.size, bytes.len() as u64);
        assert_eq!(packed.sha256, hex::encode(Sha256::digest(&bytes)));

        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            if path == "start.sh" {
                assert_eq!(entry.header().mode().unwrap() & 0o777, 0o755);
            }
            if path == "index.html" {
                assert!(entry.header().entry_type().is_symlink());
            }
            seen.push(path);
        }
        assert!(
            seen.contains(&"public/admin/index.html".to_owned()),
            "{seen:?}"
        );
    }

    #[test]
    fn links_leaving_the_directory_fail_naming_the_link() {
        for target in ["/etc/passwd", "../../etc/passwd", "admin/../../../x"] {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("server");
            std::fs::create_dir_all(root.join("public")).unwrap();
            std::os::unix::fs::symlink(target, root.join("public/leak")).unwrap();
            let err = pack(&root, &dir.path().join("out.tar.gz")).unwrap_err();
            assert!(
                matches!(&err, PackError::SymlinkEscapes { link, .. } if link == "public/leak"),
                "{target}: {err}"
            );
        }
    }
}
