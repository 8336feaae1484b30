//! Test helpers shared by the agent's unit tests (and, through the `testing`
//! feature, the end-to-end tests).

// Tests: a fixture that cannot be set up should stop the test loudly.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

/// A tmpfs of `size` mounted at `at` for as long as this lives: a disk that
/// really fills up. Mounting needs root, which CI has; a developer without it
/// skips the test, unless `KILN_REQUIRE_DOCKER` is set, as in CI.
pub struct SmallDisk(PathBuf);

impl SmallDisk {
    pub fn mount(at: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(at).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        if mounted.status.success() {
            return Some(SmallDisk(at.to_owned()));
        }
        let error = String::from_utf8_lossy(&mounted.stderr);
        assert!(
            std::env::var_os("KILN_REQUIRE_DOCKER").is_none(),
            "cannot mount a tmpfs for a full-disk test: {error}"
        );
        eprintln!("skip: cannot mount a tmpfs ({error}); run as root");
        None
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A temporary directory holding `files` (path, contents), parents created.
#[cfg(test)]
pub fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}
