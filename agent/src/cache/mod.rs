//! The build cache on an agent host: what one build leaves for the next of the
//! same project, in trust scopes as GitHub Actions keeps them.
//!
//! ```text
//! <cache_dir>/<project>/<scope>/<kind>/<group>/<key>/{meta.json, used, data/}
//! <cache_dir>/tmp/…     entries being written, published by one rename
//! <cache_dir>/trash/…   entries being deleted
//! ```
//!
//! Kinds: `deps` (the installed `node_modules` trees), `store` (the package
//! manager's own store or cache), `framework` (`.next/cache`), `output` (a
//! component's packed artifact), `secret` (a key kept for one scope only).
//! Every name below the project is a hash, so no job field ever becomes a path.
//! An entry is written under `tmp/`, published by an atomic rename, and never
//! modified after; its files are read-only. A build gets its own copy: hard
//! links when it cannot write them (another uid, or its own scope, which only it
//! writes), a real copy otherwise. A scope reads its own entries, then those of
//! its fallback scopes (a preview: its base branch); it writes only its own
//! (and a `secret` is read by its own scope alone).

pub mod inputs;
pub mod lockfile;

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::beneath;

/// What an entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Installed dependencies: every `node_modules` tree of an install, at its path.
    Deps,
    /// The package manager's store or download cache.
    Store,
    /// A framework's build cache (`.next/cache`).
    Framework,
    /// A component's packed build output.
    Output,
    /// A secret the agent made for a scope's builds (Next.js's Server Actions
    /// key); read only by that scope, never by the scopes that fall back to it.
    Secret,
}

impl Kind {
    /// Its name, in paths and in the build's provenance.
    pub fn name(self) -> &'static str {
        self.dir()
    }

    fn dir(self) -> &'static str {
        match self {
            Kind::Deps => "deps",
            Kind::Store => "store",
            Kind::Framework => "framework",
            Kind::Output => "output",
            Kind::Secret => "secret",
        }
    }
}

/// What is known of an entry, written when it is published.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// What it is for a person: `pnpm store`, `backend output`.
    pub label: String,
    /// The scope that wrote it (`branch:main`, `pr:12`).
    pub scope: String,
    pub key: String,
    pub created_ms: i64,
    pub bytes: u64,
    pub files: u64,
    /// The job whose build it came from.
    pub job_id: String,
    /// For an output: its artifact's sha256 and file count.
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub packed_files: Option<u64>,
    /// For dependencies: the `node_modules` trees held, relative to the checkout.
    #[serde(default)]
    pub paths: Vec<String>,
}

/// An entry found for a build.
#[derive(Debug, Clone)]
pub struct Found {
    pub dir: PathBuf,
    pub meta: Meta,
    /// Whether it is this build's own scope's (else a fallback scope's).
    pub own_scope: bool,
    /// Whether its key is the one asked for (else the newest of its group).
    pub exact: bool,
}

impl Found {
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
}

/// Which scopes a build reads and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scopes {
    /// Where this build's entries go, and the first place it looks.
    pub write: String,
    /// Where else it looks, in order.
    pub read: Vec<String>,
}

/// Where an entry is (or would be): project, scopes, kind, group and key.
#[derive(Debug, Clone, Copy)]
pub struct Slot<'a> {
    pub project: &'a str,
    pub scopes: &'a Scopes,
    pub kind: Kind,
    /// Entries of one group stand in for each other on a miss (`newest_of_group`).
    pub group: &'a str,
    pub key: &'a str,
}

/// The cache of one agent host.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    limit: u64,
    /// The agent's uid, which owns every entry.
    agent_uid: u32,
    /// The uid builds run as.
    build_uid: u32,
    build_gid: u32,
}

/// How long an entry may go unused before a sweep drops it.
pub const UNUSED_FOR: Duration = Duration::from_secs(7 * 24 * 3600);

fn hashed(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..16])
}

/// Whole days since 1970, for keys that change with time.
pub fn unix_days() -> i64 {
    now_ms() / (24 * 3600 * 1000)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

/// A fresh directory name under `tmp/` or `trash/`.
fn random_name() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 12];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Gives `path` (never following a link) to `uid` and, if given, `gid`.
fn chown(path: &Path, uid: u32, gid: Option<u32>) -> io::Result<()> {
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        path,
        Some(nix::unistd::Uid::from_raw(uid)),
        gid.map(nix::unistd::Gid::from_raw),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(io::Error::from)
}

/// Sizes and counts files under `dir`, making every file read-only and, when
/// `owner` is given, the agent's: a build that gets them by hard link cannot
/// write through them.
fn seal(dir: &Path, owner: Option<u32>) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (mut bytes, mut files) = (0u64, 0u64);
    for entry in walkdir::WalkDir::new(dir).follow_links(false) {
        let entry = entry.map_err(io::Error::other)?;
        let kind = entry.file_type();
        if kind.is_symlink() {
            continue;
        }
        let meta = entry.metadata().map_err(io::Error::other)?;
        if let Some(uid) = owner {
            if meta.uid() != uid {
                chown(entry.path(), uid, None)?;
            }
        }
        if kind.is_file() {
            bytes += meta.len();
            files += 1;
            // Read-only, and never setuid or setgid.
            let mode = meta.mode() & 0o7777;
            if mode != mode & 0o555 {
                std::fs::set_permissions(
                    entry.path(),
                    std::fs::Permissions::from_mode(mode & 0o555),
                )?;
            }
        }
    }
    Ok((bytes, files))
}

/// A directory a build leaves for the cache: `path` under `root` (the build's
/// directory, which the build cannot replace), kept at `rel` in the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub root: PathBuf,
    pub path: PathBuf,
    pub rel: PathBuf,
}

/// How a restore went.
#[derive(Debug, Clone, Copy)]
pub struct Restored {
    pub linked: bool,
    pub took: Duration,
}

impl Cache {
    pub fn new(root: &Path, limit: u64, build_user: crate::config::UidGid) -> Cache {
        Cache {
            root: root.to_owned(),
            limit,
            agent_uid: nix::unistd::getuid().as_raw(),
            build_uid: build_user.uid,
            build_gid: build_user.gid,
        }
    }

    fn scope_dir(&self, project: &str, scope: &str) -> PathBuf {
        self.root.join(hashed(project)).join(hashed(scope))
    }

    fn group_dir(&self, project: &str, scope: &str, kind: Kind, group: &str) -> PathBuf {
        self.scope_dir(project, scope)
            .join(kind.dir())
            .join(hashed(group))
    }

    fn read_meta(dir: &Path) -> Option<Meta> {
        serde_json::from_slice(&std::fs::read(dir.join("meta.json")).ok()?).ok()
    }

    /// The entry for `key`, or (with `newest_of_group`) the newest of its group:
    /// in the write scope first, then the read scopes.
    pub fn find(&self, slot: Slot<'_>, newest_of_group: bool) -> Option<Found> {
        let Slot {
            project,
            scopes,
            kind,
            group,
            key,
        } = slot;
        let all: Vec<&String> = std::iter::once(&scopes.write).chain(&scopes.read).collect();
        for (index, scope) in all.iter().enumerate() {
            let dir = self
                .group_dir(project, scope, kind, group)
                .join(hashed(key));
            if let Some(meta) = Self::read_meta(&dir) {
                return Some(Found {
                    dir,
                    meta,
                    own_scope: index == 0,
                    exact: true,
                });
            }
        }
        if !newest_of_group {
            return None;
        }
        for (index, scope) in all.iter().enumerate() {
            let group_dir = self.group_dir(project, scope, kind, group);
            let newest = std::fs::read_dir(&group_dir)
                .ok()?
                .flatten()
                .filter_map(|entry| {
                    let dir = entry.path();
                    Self::read_meta(&dir).map(|meta| (dir, meta))
                })
                .max_by_key(|(_, meta)| meta.created_ms);
            if let Some((dir, meta)) = newest {
                return Some(Found {
                    dir,
                    meta,
                    own_scope: index == 0,
                    exact: false,
                });
            }
        }
        None
    }

    /// Whether a build may get `found`'s files by hard link: it runs as another
    /// uid (so cannot write them), or the entry is its own scope's (which only
    /// builds of that scope write anyway).
    pub fn may_link(&self, found: &Found) -> bool {
        self.build_uid != self.agent_uid || found.own_scope
    }

    /// Restores `rel` of `found`'s data as `dest` under `root` (the build's
    /// directory), which must not exist yet: by hard link when `link` is allowed
    /// and asked for, else by copy. Every directory on the way is opened without
    /// following a link, so a build that plants one (even while this runs) gets
    /// an error, never a write outside `root`.
    pub fn restore_path(
        &self,
        found: &Found,
        rel: &Path,
        root: &Path,
        dest: &Path,
        link: bool,
    ) -> io::Result<Restored> {
        let started = Instant::now();
        let linked = link && self.may_link(found);
        let owner = (self.agent_uid != self.build_uid).then_some(beneath::Owner {
            uid: self.build_uid,
            gid: self.build_gid,
        });
        let mode = beneath::CopyMode {
            link_files: linked,
            owner,
            // A copy is the build's own: its files writable.
            writable: !linked,
        };
        beneath::copy_in(&found.data().join(rel), root, dest, mode)?;
        if !found.dir.join("meta.json").exists() {
            let _ = beneath::remove(root, dest);
            return Err(io::Error::other(
                "the entry was evicted while it was restored",
            ));
        }
        Self::touch(found);
        Ok(Restored {
            linked,
            took: started.elapsed(),
        })
    }

    fn touch(found: &Found) {
        let _ = std::fs::File::options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(found.dir.join("used"))
            .and_then(|file| file.set_modified(SystemTime::now()));
    }

    /// Publishes an entry made of `sources` (directories under a build's root,
    /// moved in without following a link at any level) under the write scope. Returns `None` when one with this
    /// key exists already (the first writer wins; the sources are left alone).
    pub fn publish(
        &self,
        slot: Slot<'_>,
        mut meta: Meta,
        sources: &[Source],
    ) -> io::Result<Option<Meta>> {
        let Slot {
            project,
            scopes,
            kind,
            group,
            key,
        } = slot;
        let final_dir = self
            .group_dir(project, &scopes.write, kind, group)
            .join(hashed(key));
        if final_dir.join("meta.json").exists() {
            return Ok(None);
        }
        let tmp = self.root.join("tmp").join(random_name());
        let data = tmp.join("data");
        std::fs::create_dir_all(&data)?;
        let made = (|| -> io::Result<()> {
            for source in sources {
                let dest = data.join(&source.rel);
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                beneath::move_out(&source.root, &source.path, &dest)?;
            }
            let owner = (self.agent_uid == 0).then_some(0);
            let (bytes, files) = seal(&data, owner)?;
            meta.bytes = bytes;
            meta.files = files;
            meta.scope = scopes.write.clone();
            meta.key = key.to_owned();
            meta.created_ms = now_ms();
            std::fs::write(tmp.join("meta.json"), serde_json::to_vec_pretty(&meta)?)?;
            std::fs::write(tmp.join("used"), b"")?;
            std::fs::create_dir_all(final_dir.parent().unwrap_or(&self.root))?;
            std::fs::write(
                self.scope_dir(project, &scopes.write).join("scope"),
                &scopes.write,
            )?;
            Ok(())
        })();
        if let Err(error) = made {
            self.discard(&tmp);
            return Err(error);
        }
        match std::fs::rename(&tmp, &final_dir) {
            Ok(()) => Ok(Some(meta)),
            // Another job published the same key first: keep theirs.
            Err(_) if final_dir.join("meta.json").exists() => {
                self.discard(&tmp);
                Ok(None)
            }
            Err(error) => {
                self.discard(&tmp);
                Err(error)
            }
        }
    }

    /// The secret kept for `slot`'s write scope alone (its read scopes are never
    /// asked), made by `make` and published the first time. Two builds making
    /// one at once both get the one published first.
    pub fn own_secret(&self, slot: Slot<'_>, make: impl FnOnce() -> String) -> io::Result<String> {
        let own = Scopes {
            write: slot.scopes.write.clone(),
            read: Vec::new(),
        };
        let slot = Slot {
            scopes: &own,
            kind: Kind::Secret,
            ..slot
        };
        let read = |found: &Found| -> io::Result<String> {
            Self::touch(found);
            std::fs::read_to_string(found.data().join("value"))
        };
        if let Some(found) = self.find(slot, false) {
            return read(&found);
        }
        let tmp = self.root.join("tmp");
        std::fs::create_dir_all(&tmp)?;
        let made = tmp.join(format!("{}.secret", random_name()));
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&made)?
                .write_all(make().as_bytes())?;
        }
        let meta = Meta {
            label: "a secret".to_owned(),
            ..Default::default()
        };
        let source = Source {
            root: tmp,
            path: made.file_name().map(PathBuf::from).unwrap_or_default(),
            rel: PathBuf::from("value"),
        };
        let published = self.publish(slot, meta, &[source]);
        let _ = std::fs::remove_file(&made);
        published?;
        let found = self
            .find(slot, false)
            .ok_or_else(|| io::Error::other("the secret vanished as it was published"))?;
        read(&found)
    }

    /// Moves `dir` out of sight at once, then deletes it.
    fn discard(&self, dir: &Path) {
        let trash = self.root.join("trash");
        let target = trash.join(random_name());
        let doomed =
            match std::fs::create_dir_all(&trash).and_then(|()| std::fs::rename(dir, &target)) {
                Ok(()) => target,
                Err(_) => dir.to_owned(),
            };
        // Sealed files are read-only, which does not stop their removal.
        let _ = std::fs::remove_dir_all(&doomed);
    }

    /// Drops every entry of `scopes` (closed pull requests' scopes).
    pub fn drop_scopes(&self, project: &str, scopes: &[String]) -> u64 {
        let mut bytes = 0;
        for scope in scopes {
            let dir = self.scope_dir(project, scope);
            if dir.exists() {
                bytes += self
                    .entries_under(&dir)
                    .iter()
                    .map(|(_, meta, _)| meta.bytes)
                    .sum::<u64>();
                self.discard(&dir);
            }
        }
        bytes
    }

    /// Every entry, with its last use, the least recently used first.
    fn least_recently_used_first(&self) -> Vec<(PathBuf, Meta, SystemTime)> {
        let mut entries = self.entries_under(&self.root);
        entries.sort_by_key(|(_, _, used)| *used);
        entries
    }

    /// Every entry under `dir`, with its last use.
    fn entries_under(&self, dir: &Path) -> Vec<(PathBuf, Meta, SystemTime)> {
        walkdir::WalkDir::new(dir)
            .min_depth(1)
            .max_depth(6)
            .follow_links(false)
            .into_iter()
            .flatten()
            .filter(|entry| entry.file_type().is_file() && entry.file_name() == "meta.json")
            .filter_map(|entry| {
                let dir = entry.path().parent()?.to_owned();
                // Under tmp/ or trash/: not an entry.
                if dir.starts_with(self.root.join("tmp"))
                    || dir.starts_with(self.root.join("trash"))
                {
                    return None;
                }
                let meta = Self::read_meta(&dir)?;
                let used = std::fs::metadata(dir.join("used"))
                    .and_then(|used| used.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                Some((dir, meta, used))
            })
            .collect()
    }

    /// Drops entries unused for `UNUSED_FOR`, then the least recently used until
    /// the cache fits `cache_limit`, and leftovers of interrupted writes. Returns
    /// the entries dropped and the bytes reclaimed.
    pub fn sweep(&self) -> (usize, u64) {
        let entries = self.least_recently_used_first();
        let now = SystemTime::now();
        let mut total: u64 = entries.iter().map(|(_, meta, _)| meta.bytes).sum();
        let (mut dropped, mut reclaimed) = (0, 0);
        for (dir, meta, used) in entries {
            let stale = now.duration_since(used).unwrap_or_default() > UNUSED_FOR;
            if stale || total > self.limit {
                self.discard(&dir);
                total = total.saturating_sub(meta.bytes);
                dropped += 1;
                reclaimed += meta.bytes;
            }
        }
        // Writes a crash interrupted, and deletes it did not finish.
        for leftover in ["tmp", "trash"] {
            if let Ok(children) = std::fs::read_dir(self.root.join(leftover)) {
                for child in children.flatten() {
                    let old = child
                        .metadata()
                        .and_then(|meta| meta.modified())
                        .is_ok_and(|at| {
                            now.duration_since(at).unwrap_or_default() > Duration::from_secs(3600)
                        });
                    if old || leftover == "trash" {
                        let _ = std::fs::remove_dir_all(child.path());
                    }
                }
            }
        }
        (dropped, reclaimed)
    }

    /// Drops the least recently used entries until the file system holding `dir`
    /// has `wanted` bytes free, or the cache is empty; drops nothing when the
    /// cache lives on another file system. Returns the entries dropped and the
    /// bytes reclaimed.
    pub fn give_back(&self, dir: &Path, wanted: u64) -> (usize, u64) {
        if !crate::disk::same_file_system(&self.root, dir) {
            return (0, 0);
        }
        let (mut dropped, mut reclaimed) = (0, 0);
        for (entry, meta, _) in self.least_recently_used_first() {
            if crate::disk::free(dir).is_ok_and(|free| free >= wanted) {
                break;
            }
            self.discard(&entry);
            dropped += 1;
            reclaimed += meta.bytes;
        }
        (dropped, reclaimed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UidGid;

    fn cache(root: &Path, limit: u64) -> Cache {
        let me = UidGid {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        };
        Cache::new(root, limit, me)
    }

    fn scopes(write: &str, read: &[&str]) -> Scopes {
        Scopes {
            write: write.into(),
            read: read.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// A `node_modules` tree with one file, at `dir`.
    fn tree(dir: &Path, text: &str) -> PathBuf {
        let modules = dir.join("node_modules");
        std::fs::create_dir_all(modules.join("pkg")).unwrap();
        std::fs::write(modules.join("pkg/index.js"), text).unwrap();
        modules
    }

    fn slot<'a>(project: &'a str, scopes: &'a Scopes, key: &'a str) -> Slot<'a> {
        Slot {
            project,
            scopes,
            kind: Kind::Deps,
            group: "root",
            key,
        }
    }

    fn publish(cache: &Cache, scope: &Scopes, key: &str, source: PathBuf) -> Option<Meta> {
        cache
            .publish(
                slot("prj_1", scope, key),
                Meta {
                    label: "test".into(),
                    job_id: "job_1".into(),
                    ..Default::default()
                },
                &[Source {
                    root: source.parent().unwrap().to_owned(),
                    path: PathBuf::from("node_modules"),
                    rel: PathBuf::from("node_modules"),
                }],
            )
            .unwrap()
    }

    #[test]
    fn an_entry_is_published_once_and_restored_as_a_read_only_copy() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(&dir.path().join("cache"), 1 << 30);
        let main = scopes("branch:main", &[]);
        let meta = publish(&cache, &main, "k1", tree(&dir.path().join("w1"), "one")).unwrap();
        assert_eq!((meta.files, meta.bytes), (1, 3));
        // A second writer of the same key loses and keeps its files.
        let second = tree(&dir.path().join("w2"), "two");
        assert!(publish(&cache, &main, "k1", second.clone()).is_none());
        assert!(second.exists());

        let found = cache.find(slot("prj_1", &main, "k1"), false).unwrap();
        assert!(found.exact && found.own_scope);
        let dest = dir.path().join("restored");
        std::fs::create_dir_all(&dest).unwrap();
        let restored = cache
            .restore_path(
                &found,
                Path::new("node_modules"),
                &dest,
                Path::new("node_modules"),
                true,
            )
            .unwrap();
        assert!(restored.linked, "its own scope links");
        let file = dest.join("node_modules/pkg/index.js");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "one");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o222,
            0
        );
        // Nothing else of the workspace was touched by the publish's move.
        assert!(!dir.path().join("w1/node_modules").exists());
    }

    #[test]
    fn a_preview_reads_its_base_branch_but_copies_it_and_writes_only_its_own_scope() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(&dir.path().join("cache"), 1 << 30);
        let main = scopes("branch:main", &[]);
        publish(&cache, &main, "k1", tree(&dir.path().join("w1"), "trusted"));
        let preview = scopes("pr:7", &["branch:main"]);
        let found = cache.find(slot("prj_1", &preview, "k1"), false).unwrap();
        assert!(!found.own_scope);
        let dest = dir.path().join("preview");
        std::fs::create_dir_all(&dest).unwrap();
        let restored = cache
            .restore_path(
                &found,
                Path::new("node_modules"),
                &dest,
                Path::new("node_modules"),
                true,
            )
            .unwrap();
        assert!(
            !restored.linked,
            "the same uid never links another scope's files"
        );
        // The preview spoils its copy; the base branch's entry is untouched.
        let copy = dest.join("node_modules/pkg/index.js");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&copy, "poisoned").unwrap();
        let again = cache.find(slot("prj_1", &main, "k1"), false).unwrap();
        assert_eq!(
            std::fs::read_to_string(again.data().join("node_modules/pkg/index.js")).unwrap(),
            "trusted"
        );
        // What the preview publishes lands in its scope only.
        publish(
            &cache,
            &preview,
            "k2",
            tree(&dir.path().join("w2"), "preview"),
        );
        assert!(cache.find(slot("prj_1", &main, "k2"), false).is_none());
        assert!(cache.find(slot("prj_1", &preview, "k2"), false).is_some());
        // Projects never share.
        assert!(cache.find(slot("prj_2", &main, "k1"), false).is_none());
        // Closing the pull request drops its scope.
        cache.drop_scopes("prj_1", &["pr:7".to_owned()]);
        assert!(cache.find(slot("prj_1", &preview, "k2"), false).is_none());
        assert!(cache.find(slot("prj_1", &main, "k1"), false).is_some());
    }

    #[test]
    fn a_miss_falls_back_to_the_newest_of_the_group_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(&dir.path().join("cache"), 1 << 30);
        let main = scopes("branch:main", &[]);
        publish(&cache, &main, "old", tree(&dir.path().join("w1"), "old"));
        std::thread::sleep(Duration::from_millis(5));
        publish(&cache, &main, "new", tree(&dir.path().join("w2"), "new"));
        assert!(cache.find(slot("prj_1", &main, "other"), false).is_none());
        let newest = cache.find(slot("prj_1", &main, "other"), true).unwrap();
        assert!(!newest.exact);
        assert_eq!(newest.meta.key, "new");
    }

    #[test]
    fn giving_back_disk_drops_the_least_recently_used_until_enough_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let Some(_disk) = crate::testing::SmallDisk::mount(dir.path(), "16m") else {
            return;
        };
        let small = cache(&dir.path().join("cache"), 1 << 30);
        let work = dir.path().join("work");
        let main = scopes("branch:main", &[]);
        for key in ["a", "b", "c"] {
            let source = dir.path().join(key);
            let modules = tree(&source, key);
            std::fs::write(modules.join("pkg/blob"), vec![7u8; 3 << 20]).unwrap();
            publish(&small, &main, key, modules);
            std::fs::remove_dir_all(&source).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        // Fill the disk to within 2 MiB.
        let free = crate::disk::free(&work).unwrap();
        std::fs::write(
            dir.path().join("filler"),
            vec![0u8; (free - (2 << 20)) as usize],
        )
        .unwrap();

        let (dropped, reclaimed) = small.give_back(&work, 4 << 20);
        assert_eq!(dropped, 1);
        assert!(reclaimed >= 3 << 20, "{reclaimed}");
        assert!(crate::disk::free(&work).unwrap() >= 4 << 20);
        assert!(small.find(slot("prj_1", &main, "a"), false).is_none());
        assert!(small.find(slot("prj_1", &main, "b"), false).is_some());
        // More than the cache holds: all of it goes, and no more.
        assert_eq!(small.give_back(&work, 1 << 30).0, 2);
        assert_eq!(small.give_back(&work, 1 << 30), (0, 0));

        // A cache on another disk gives nothing back for this one.
        let elsewhere = tempfile::tempdir().unwrap();
        let other = cache(&elsewhere.path().join("cache"), 1 << 30);
        publish(&other, &main, "d", tree(&elsewhere.path().join("d"), "d"));
        assert_eq!(other.give_back(&work, 1 << 30), (0, 0));
        assert!(other.find(slot("prj_1", &main, "d"), false).is_some());
    }

    #[test]
    fn the_sweep_drops_the_least_recently_used_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(&dir.path().join("cache"), 8);
        let main = scopes("branch:main", &[]);
        for (key, text) in [("a", "aaaa"), ("b", "bbbb"), ("c", "cccc")] {
            publish(&cache, &main, key, tree(&dir.path().join(key), text));
            std::thread::sleep(Duration::from_millis(20));
        }
        // `a` was used last, so `b` is the least recent.
        let a = cache.find(slot("prj_1", &main, "a"), false).unwrap();
        std::fs::create_dir_all(dir.path().join("use-a")).unwrap();
        cache
            .restore_path(
                &a,
                Path::new("node_modules"),
                &dir.path().join("use-a"),
                Path::new("node_modules"),
                true,
            )
            .unwrap();
        let (dropped, reclaimed) = cache.sweep();
        assert_eq!((dropped, reclaimed), (1, 4));
        assert!(cache.find(slot("prj_1", &main, "b"), false).is_none());
        for kept in ["a", "c"] {
            assert!(
                cache.find(slot("prj_1", &main, kept), false).is_some(),
                "{kept}"
            );
        }
    }

    #[test]
    fn concurrent_publishers_of_one_key_leave_one_whole_entry() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(&dir.path().join("cache"), 1 << 30);
        let main = scopes("branch:main", &[]);
        let sources: Vec<PathBuf> = (0..8)
            .map(|n| {
                let modules = dir.path().join(format!("w{n}")).join("node_modules");
                for file in 0..50 {
                    std::fs::create_dir_all(modules.join("pkg")).unwrap();
                    std::fs::write(
                        modules.join(format!("pkg/{file}.js")),
                        format!("writer {n}"),
                    )
                    .unwrap();
                }
                modules
            })
            .collect();
        let winners: usize = std::thread::scope(|threads| {
            let handles: Vec<_> = sources
                .into_iter()
                .map(|source| {
                    let (cache, main) = (&cache, &main);
                    threads.spawn(move || publish(cache, main, "k", source).is_some() as usize)
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().unwrap())
                .sum()
        });
        assert_eq!(winners, 1);
        let found = cache.find(slot("prj_1", &main, "k"), false).unwrap();
        let texts: std::collections::HashSet<String> = (0..50)
            .map(|file| {
                std::fs::read_to_string(found.data().join(format!("node_modules/pkg/{file}.js")))
                    .unwrap()
            })
            .collect();
        assert_eq!(texts.len(), 1, "every file from the one writer that won");
        assert_eq!(found.meta.files, 50);
    }

    #[test]
    fn a_secret_is_its_scopes_alone_and_only_the_agent_reads_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(&dir.path().join("cache"), 1 << 30);
        let main = scopes("branch:main", &[]);
        let secret_slot = |scopes| Slot {
            kind: Kind::Secret,
            group: "next-server-actions",
            ..slot("prj_1", scopes, "period-1")
        };
        let first = cache
            .own_secret(secret_slot(&main), || "main-key".into())
            .unwrap();
        let again = cache
            .own_secret(secret_slot(&main), || "another".into())
            .unwrap();
        assert_eq!((first.as_str(), again.as_str()), ("main-key", "main-key"));
        // A preview, which reads the branch's other entries, gets its own.
        let preview = scopes("pr:7", &["branch:main"]);
        let theirs = cache
            .own_secret(secret_slot(&preview), || "preview-key".into())
            .unwrap();
        assert_eq!(theirs, "preview-key");
        // Another project never shares it, and a new period makes a new one.
        let other = Slot {
            project: "prj_2",
            ..secret_slot(&main)
        };
        assert_eq!(cache.own_secret(other, || "p2".into()).unwrap(), "p2");
        let next = Slot {
            key: "period-2",
            ..secret_slot(&main)
        };
        assert_eq!(
            cache.own_secret(next, || "rotated".into()).unwrap(),
            "rotated"
        );

        let found = cache.find(secret_slot(&main), false).unwrap();
        let mode = std::fs::metadata(found.data().join("value"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400, "{mode:o}");
    }
}
