//! The build host's disk: how much a directory takes, how much is free, and whether
//! a failure is a full disk's doing. Plain file-system calls; knows nothing of
//! Docker or of builds.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Free space below which a failure is put down to a full disk: a process that met
/// ENOSPC leaves next to nothing free for an unprivileged uid.
const FULL_BELOW: u64 = 16 << 20;

/// Bytes the directory takes on disk (allocated blocks, so sparse files count as
/// what they use); links are not followed.
pub(crate) fn usage(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|entry| entry.metadata().ok())
        .map(|meta| meta.blocks() * 512)
        .sum()
}

/// `dir`, or its nearest parent that exists: where it is (or will be) stored.
fn existing(dir: &Path) -> std::path::PathBuf {
    let mut probe = dir.to_owned();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    probe
}

/// Bytes an unprivileged process may still write on the file system that holds (or
/// will hold) `dir`.
pub(crate) fn free(dir: &Path) -> std::io::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(&existing(dir)).map_err(std::io::Error::from)?;
    Ok(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

/// Whether `a` and `b` are (or will be) on one file system, so freeing one frees
/// the other.
pub(crate) fn same_file_system(a: &Path, b: &Path) -> bool {
    match (
        std::fs::metadata(existing(a)),
        std::fs::metadata(existing(b)),
    ) {
        (Ok(a), Ok(b)) => a.dev() == b.dev(),
        _ => false,
    }
}

/// The file system holding a directory has (nearly) run out: what is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Full {
    pub free_bytes: u64,
}

/// `Some` when so little is left on the file system holding `dir` that a failure
/// there is a full disk's doing.
pub(crate) fn full(dir: &Path) -> Option<Full> {
    let free_bytes = free(dir).ok()?;
    (free_bytes < FULL_BELOW).then_some(Full { free_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_blocks_and_free_finds_an_existing_parent() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 64 * 1024]).unwrap();
        assert!(usage(dir.path()) >= 64 * 1024);
        assert!(free(&dir.path().join("not/yet/made")).unwrap() > 0);
    }
}
