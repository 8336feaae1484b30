//! Log storage: one append-only file per job and stream under `<data>/logs`.
//!
//! The file's length is the stream's offset, so an append is idempotent by offset
//! and survives a restart without any index. An acknowledged append is on disk
//! (fsync) before the agent hears "ok", so a crash loses nothing the agent dropped.
//! Beside each log, `<stream>.times` holds the agent's time marks (`offset millis`
//! lines), which give every line its timestamp without touching the log's bytes.
//!
//! With an object store (replicas), each acknowledged append is also an object
//! and a `log_chunks` row, recorded before the agent hears "ok"; the local file
//! is then this replica's copy, brought up to date (`pull`) before every read.

pub(crate) mod filter;
pub mod index;
pub mod lines;
mod plain;
pub(crate) mod read;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kiln_protocol::LogStream;
use std::io::Write;
use std::os::unix::fs::FileExt;

use axum::body::Bytes;
use futures::StreamExt;
use tokio::sync::Notify;

use crate::error::ApiError;
use index::{LineIndex, Section, Window};

type StreamKey = (String, LogStream);

/// Line indexes kept for the viewer; past this many, they are dropped and rebuilt
/// on the next look.
const INDEXES_KEPT: usize = 256;

#[derive(Debug)]
pub struct LogStore {
    root: PathBuf,
    /// Bytes kept per stream; an append past it is refused whole.
    limit: u64,
    // One writer per stream at a time; different streams append in parallel.
    locks: Mutex<HashMap<StreamKey, Arc<tokio::sync::Mutex<()>>>>,
    /// The dashboard's line indexes, built as logs are looked at.
    indexes: Mutex<HashMap<StreamKey, Arc<Mutex<LineIndex>>>>,
    /// Woken on every append, for readers that follow a stream live.
    pub appended: Notify,
    /// Where the logs really are when replicas share them.
    shared: Option<SharedLogs>,
    /// Index reads (windows, searches, outlines) running at once: each holds
    /// up to a window's bytes and a core, and the API must keep answering.
    reads: tokio::sync::Semaphore,
}

/// Index reads served at once; more wait their turn.
const READS_AT_ONCE: usize = 4;

/// The object store and the database listing its chunks.
#[derive(Clone)]
pub struct SharedLogs {
    pub objects: crate::objects::Objects,
    pub db: crate::db::Db,
}

impl std::fmt::Debug for SharedLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedLogs({:?})", self.objects)
    }
}

/// Tries at an append another replica keeps getting ahead of.
const SHARED_APPEND_TRIES: usize = 5;
/// Listings a read may go through while compactions replace what they name.
const PULL_TRIES: usize = 5;
/// Log objects a replica fetches at once while bringing its copy up to date.
const CHUNKS_FETCHED_AT_ONCE: usize = 16;

/// How far a copy from the object store got.
enum Copied {
    /// Every chunk listed; the copy is now this long.
    All(u64),
    /// Up to this length; then a listed chunk was gone (compacted).
    Replaced(u64),
}

impl LogStore {
    pub fn new(root: PathBuf, limit: u64) -> Self {
        Self {
            root,
            limit,
            locks: Mutex::default(),
            indexes: Mutex::default(),
            appended: Notify::new(),
            shared: None,
            reads: tokio::sync::Semaphore::new(READS_AT_ONCE),
        }
    }

    pub fn with_shared(mut self, shared: Option<SharedLogs>) -> Self {
        self.shared = shared;
        self
    }

    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Brings this replica's copy of a stream up to what the object store holds
    /// (nothing to do without one).
    pub async fn pull(&self, job_id: &str, stream: LogStream) -> Result<(), ApiError> {
        if self.shared.is_none() {
            return Ok(());
        }
        let lock = self.lock_for(job_id, stream);
        let _guard = lock.lock().await;
        self.pull_locked(job_id, stream).await.map(|_| ())
    }

    /// `pull` under the stream's lock; returns the copy's length.
    async fn pull_locked(&self, job_id: &str, stream: LogStream) -> Result<u64, ApiError> {
        let mut len = file_len(&self.path(job_id, stream))?;
        let Some(shared) = &self.shared else {
            return Ok(len);
        };
        // A chunk listed here may be gone by the time it is read: a compaction
        // replaced it. The next listing then names the object that holds it.
        for _ in 0..PULL_TRIES {
            let id = job_id.to_owned();
            let chunks = shared
                .db
                .call(move |conn| crate::store::log_chunks_from(conn, &id, stream, len))
                .await?;
            match self.copy_chunks(job_id, stream, len, chunks).await? {
                Copied::All(new_len) => return Ok(new_len),
                Copied::Replaced(new_len) => len = new_len,
            }
        }
        Err(ApiError::Unavailable(format!(
            "log {stream} of job {job_id} kept being compacted while this replica read it; retry"
        )))
    }

    /// Appends `chunks` (listed from `len` on) to this replica's copy.
    async fn copy_chunks(
        &self,
        job_id: &str,
        stream: LogStream,
        mut len: u64,
        chunks: Vec<crate::store::LogChunk>,
    ) -> Result<Copied, ApiError> {
        let Some(shared) = &self.shared else {
            return Ok(Copied::All(len));
        };
        // Fetched several at a time (a long build's log is thousands of
        // objects), appended in order.
        let copy_len = len;
        let mut fetched = futures::stream::iter(chunks)
            .map(|chunk| async move {
                // Only what this copy lacks: a compacted chunk starts at 0.
                let skip = copy_len.saturating_sub(chunk.start).min(chunk.length);
                let data = shared.objects.get_from(&chunk.object_key, skip).await;
                (chunk, skip, data)
            })
            .buffered(CHUNKS_FETCHED_AT_ONCE);
        while let Some((chunk, skip, data)) = fetched.next().await {
            let Some(data) = data? else {
                return Ok(Copied::Replaced(len));
            };
            if skip + data.len() as u64 != chunk.length {
                return Err(ApiError::Internal(format!(
                    "log object {} holds {} bytes where {} were recorded",
                    chunk.object_key,
                    skip + data.len() as u64,
                    chunk.length
                )));
            }
            let (path, times_path) = (self.path(job_id, stream), self.times_path(job_id, stream));
            let appended = tokio::task::spawn_blocking(move || {
                append_at(
                    &path,
                    &times_path,
                    chunk.start + skip,
                    &data,
                    &chunk.marks,
                    u64::MAX,
                )
            })
            .await
            .map_err(|e| ApiError::Internal(format!("log copy task failed: {e}")))??;
            match appended {
                Appended::Upto(new_len) => len = new_len,
                _ => {
                    return Err(ApiError::Internal(format!(
                        "log chunk at {} of job {job_id} {stream} does not join this copy ({len} bytes)",
                        chunk.start
                    )))
                }
            }
        }
        Ok(Copied::All(len))
    }

    /// Gathers each stream's chunks in the object store into one object, so a
    /// finished log is read back with one request. Returns the chunks replaced.
    /// Readers keep working throughout: the merged chunk is recorded before
    /// the old objects go, and a reader that finds one gone lists again.
    pub async fn compact(&self, job_id: &str) -> Result<usize, ApiError> {
        let Some(shared) = &self.shared else {
            return Ok(0);
        };
        let mut replaced_count = 0;
        for stream in LogStream::ALL {
            let lock = self.lock_for(job_id, stream);
            let _guard = lock.lock().await;
            let id = job_id.to_owned();
            let chunks = shared
                .db
                .call(move |conn| crate::store::log_chunks_from(conn, &id, stream, 0))
                .await?;
            if chunks.len() < 2 {
                continue;
            }
            // This copy then holds at least every listed chunk's bytes.
            self.pull_locked(job_id, stream).await?;
            let length = chunks.iter().map(|chunk| chunk.length).sum();
            let merged = crate::store::LogChunk {
                start: 0,
                length,
                // Named as a chunk at offset 0 is, so the keys still sort in order.
                object_key: format!(
                    "logs/{job_id}/{stream}/{:020}-compacted-{}",
                    0,
                    uuid::Uuid::new_v4().simple()
                ),
                marks: chunks
                    .iter()
                    .flat_map(|chunk| chunk.marks.iter().copied())
                    .collect(),
            };
            shared
                .objects
                .upload_head(&merged.object_key, &self.path(job_id, stream), length)
                .await?;
            let replaced: Vec<String> = chunks.into_iter().map(|chunk| chunk.object_key).collect();
            let (id, keys, recorded) = (job_id.to_owned(), replaced.clone(), merged.clone());
            let swapped = shared
                .db
                .call(move |conn| {
                    crate::store::replace_log_chunks(conn, &id, stream, &keys, &recorded)
                })
                .await?;
            if !swapped {
                shared.objects.delete(&merged.object_key).await;
                continue;
            }
            replaced_count += replaced.len();
            shared.objects.delete_all(&replaced).await;
        }
        Ok(replaced_count)
    }

    pub fn path(&self, job_id: &str, stream: LogStream) -> PathBuf {
        self.root.join(job_id).join(format!("{stream}.log"))
    }

    pub fn times_path(&self, job_id: &str, stream: LogStream) -> PathBuf {
        self.root.join(job_id).join(format!("{stream}.times"))
    }

    /// The stream's time marks, in offset order.
    pub async fn marks(&self, job_id: &str, stream: LogStream) -> Vec<(u64, i64)> {
        if let Err(error) = self.pull(job_id, stream).await {
            tracing::warn!(message = "Cannot bring a log up to date from the object store.", job_id, %stream, %error);
        }
        kiln_protocol::parse_time_mark_lines(
            &tokio::fs::read_to_string(self.times_path(job_id, stream))
                .await
                .unwrap_or_default(),
        )
    }

    /// Runs `read` on the stream's line index, brought up to date, off the
    /// async runtime.
    async fn with_index<T: Send + 'static>(
        &self,
        job_id: &str,
        stream: LogStream,
        read: impl FnOnce(&LineIndex, &Path) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, ApiError> {
        self.pull(job_id, stream).await?;
        let _turn = self
            .reads
            .acquire()
            .await
            .map_err(|_| ApiError::Unavailable("the log store is closing".to_owned()))?;
        let index = {
            let mut indexes = crate::sync::lock(&self.indexes);
            if indexes.len() >= INDEXES_KEPT {
                indexes.clear();
            }
            indexes
                .entry((job_id.to_owned(), stream))
                .or_default()
                .clone()
        };
        let path = self.path(job_id, stream);
        let result = tokio::task::spawn_blocking(move || {
            let mut index = crate::sync::lock(&index);
            index.catch_up(&path)?;
            read(&index, &path)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("log index task failed: {e}")))?;
        Ok(result?)
    }

    /// `count` lines from line `first`, or the last `count` when `first` is `None`.
    pub async fn window(
        &self,
        job_id: &str,
        stream: LogStream,
        first: Option<u64>,
        count: u64,
    ) -> Result<Window, ApiError> {
        self.with_index(job_id, stream, move |index, path| {
            let (first, keep_end) = match first {
                Some(first) => (first, false),
                None => (
                    index.window(path, 0, 0, false)?.total.saturating_sub(count),
                    true,
                ),
            };
            index.window(path, first, count, keep_end)
        })
        .await
    }

    /// The line numbers holding each of `offsets` (ascending).
    pub async fn lines_at(
        &self,
        job_id: &str,
        stream: LogStream,
        offsets: Vec<u64>,
    ) -> Result<Vec<u64>, ApiError> {
        self.with_index(job_id, stream, move |index, path| {
            index.lines_at(path, &offsets)
        })
        .await
    }

    pub async fn sections(
        &self,
        job_id: &str,
        stream: LogStream,
    ) -> Result<Vec<Section>, ApiError> {
        self.with_index(job_id, stream, |index, _| Ok(index.sections()))
            .await
    }

    /// Lines holding `needle`, at most `limit`, and whether there are more.
    pub async fn search(
        &self,
        job_id: &str,
        stream: LogStream,
        needle: String,
        limit: usize,
    ) -> Result<(Vec<u64>, bool), ApiError> {
        self.with_index(job_id, stream, move |index, path| {
            index.search(path, &needle, limit)
        })
        .await
    }

    fn lock_for(&self, job_id: &str, stream: LogStream) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = crate::sync::lock(&self.locks);
        locks
            .entry((job_id.to_owned(), stream))
            .or_default()
            .clone()
    }

    /// Appends `data`, which starts at `offset` of the stream. Bytes the server already
    /// holds are skipped (a resend); a chunk starting past the end is refused with the
    /// offset expected. Returns the stream's new length.
    pub async fn append(
        &self,
        job_id: &str,
        stream: LogStream,
        offset: u64,
        data: Bytes,
        marks: &[(u64, i64)],
    ) -> Result<u64, ApiError> {
        let lock = self.lock_for(job_id, stream);
        let _guard = lock.lock().await;
        if self.shared.is_some() {
            self.store_shared(job_id, stream, offset, &data, marks)
                .await?;
        }
        let path = self.path(job_id, stream);
        let times_path = self.times_path(job_id, stream);
        let marks = marks.to_vec();
        let limit = self.limit;
        // One trip to the blocking pool for the whole append, not one per file call:
        // a flooding build sends four of these a second per stream.
        let appended = tokio::task::spawn_blocking(move || {
            append_at(&path, &times_path, offset, &data, &marks, limit)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("log append task failed: {e}")))??;
        match appended {
            Appended::Upto(new_len) => {
                self.appended.notify_waiters();
                Ok(new_len)
            }
            Appended::Gap { expected } => Err(ApiError::LogGap {
                job_id: job_id.to_owned(),
                stream,
                offset,
                expected,
            }),
            Appended::OverLimit => Err(ApiError::LogLimit {
                job_id: job_id.to_owned(),
                stream,
                limit,
            }),
        }
    }
}

impl LogStore {
    /// Records the new part of an append in the object store and its chunk
    /// list, under the stream's lock, before the local copy takes it. A gap or
    /// the limit is left for the local check (the copy is then up to date).
    async fn store_shared(
        &self,
        job_id: &str,
        stream: LogStream,
        offset: u64,
        data: &Bytes,
        marks: &[(u64, i64)],
    ) -> Result<(), ApiError> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        for _ in 0..SHARED_APPEND_TRIES {
            let len = self.pull_locked(job_id, stream).await?;
            if offset > len {
                return Ok(());
            }
            let known = (len - offset) as usize;
            if known >= data.len() || len + (data.len() - known) as u64 > self.limit {
                return Ok(());
            }
            let fresh = data.slice(known..);
            let chunk = crate::store::LogChunk {
                start: len,
                length: fresh.len() as u64,
                object_key: format!(
                    "logs/{job_id}/{stream}/{len:020}-{}",
                    uuid::Uuid::new_v4().simple()
                ),
                marks: marks
                    .iter()
                    .copied()
                    .filter(|&(at, _)| at >= len && at < len + fresh.len() as u64)
                    .collect(),
            };
            shared.objects.put(&chunk.object_key, fresh).await?;
            let id = job_id.to_owned();
            let recorded = chunk.clone();
            let added = shared
                .db
                .call(move |conn| crate::store::add_log_chunk(conn, &id, stream, &recorded))
                .await?;
            match added {
                Ok(()) => return Ok(()),
                // Another replica took this agent's resend first: pull its
                // bytes and look again.
                Err(_) => shared.objects.delete(&chunk.object_key).await,
            }
        }
        Err(ApiError::Conflict(format!(
            "log {stream} of job {job_id} kept moving under this append; retry"
        )))
    }
}

fn file_len(path: &Path) -> std::io::Result<u64> {
    match std::fs::metadata(path) {
        Ok(meta) => Ok(meta.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

/// What an append did.
enum Appended {
    /// Stored; the stream is now this long.
    Upto(u64),
    /// Nothing stored: the chunk starts past the stream's end.
    Gap { expected: u64 },
    /// Nothing stored: the stream would grow past the limit.
    OverLimit,
}

/// Writes the part of `data` (starting at `offset`) that the log does not hold yet
/// and fsyncs it, unless that would take the stream past `limit`.
fn append_at(
    path: &Path,
    times_path: &Path,
    offset: u64,
    data: &[u8],
    marks: &[(u64, i64)],
    limit: u64,
) -> std::io::Result<Appended> {
    let len = file_len(path)?;
    if offset > len {
        return Ok(Appended::Gap { expected: len });
    }
    let known = (len - offset) as usize;
    if known >= data.len() {
        return Ok(Appended::Upto(len));
    }
    if len + (data.len() - known) as u64 > limit {
        return Ok(Appended::OverLimit);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)?;
    // Write at the verified length rather than O_APPEND, so a torn write from a
    // crash is simply overwritten by the agent's resend.
    file.write_all_at(&data[known..], len)?;
    file.sync_data()?;
    let new_len = len + (data.len() - known) as u64;
    // Only marks inside the newly stored bytes: a resend adds none twice.
    let fresh: String = marks
        .iter()
        .filter(|&&(at, _)| at >= len && at < new_len)
        .map(|&(at, millis)| kiln_protocol::time_mark_line(at, millis))
        .collect();
    if !fresh.is_empty() {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(times_path)?
            .write_all(fresh.as_bytes())?;
    }
    Ok(Appended::Upto(new_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two replicas' log stores on one database and one bucket: appends and
    /// resends through either make one byte-exact stream that both read.
    #[tokio::test]
    async fn replicas_share_one_log_through_the_object_store() {
        let Some(objects) = crate::objects::test_bucket().await else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::Db::open(
            &crate::db::shared_for_test(dir.path()),
            crate::db::POSTGRES_CONNECTIONS,
        )
        .unwrap();
        let replica = |name: &str| {
            LogStore::new(dir.path().join(name), 32).with_shared(Some(SharedLogs {
                objects: objects.clone(),
                db: db.clone(),
            }))
        };
        let (a, b) = (replica("a"), replica("b"));
        let s = LogStream::Backend;
        async fn append(
            store: &LogStore,
            offset: u64,
            data: &'static [u8],
            marks: &[(u64, i64)],
        ) -> Result<u64, ApiError> {
            let s = LogStream::Backend;
            store
                .append("j", s, offset, Bytes::from_static(data), marks)
                .await
        }
        assert_eq!(append(&a, 0, b"hello ", &[(0, 1000)]).await.unwrap(), 6);
        // The agent's resend, with more, lands on the other replica.
        assert_eq!(
            append(&b, 0, b"hello wor", &[(0, 1000), (6, 2000)])
                .await
                .unwrap(),
            9
        );
        assert_eq!(append(&a, 9, b"ld\n", &[]).await.unwrap(), 12);
        let gap = append(&b, 20, b"x", &[]).await.unwrap_err();
        assert!(
            matches!(gap, ApiError::LogGap { expected: 12, .. }),
            "{gap:?}"
        );
        let over = append(&b, 12, b"0123456789012345678901", &[])
            .await
            .unwrap_err();
        assert!(matches!(over, ApiError::LogLimit { .. }), "{over:?}");
        for store in [&a, &b] {
            assert_eq!(store.window("j", s, Some(0), 10).await.unwrap().total, 1);
            assert_eq!(std::fs::read(store.path("j", s)).unwrap(), b"hello world\n");
            assert_eq!(store.marks("j", s).await, [(0, 1000), (6, 2000)]);
        }
        // A third replica, started later, rebuilds the stream from the store.
        let c = replica("c");
        c.pull("j", s).await.unwrap();
        assert_eq!(std::fs::read(c.path("j", s)).unwrap(), b"hello world\n");
    }

    /// A finished log's chunks become one object per stream; replicas that
    /// had part of it, none of it, or a listing made before the compaction
    /// still read it byte-exact, marks included, and appends go on after it.
    #[tokio::test]
    async fn compaction_makes_one_object_that_every_reader_follows() {
        let Some(objects) = crate::objects::test_bucket().await else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::Db::open(
            &crate::db::shared_for_test(dir.path()),
            crate::db::POSTGRES_CONNECTIONS,
        )
        .unwrap();
        let replica = |name: &str| {
            LogStore::new(dir.path().join(name), 1024).with_shared(Some(SharedLogs {
                objects: objects.clone(),
                db: db.clone(),
            }))
        };
        let (writer, partial) = (replica("writer"), replica("partial"));
        let s = LogStream::Backend;
        let lines: Vec<String> = (0..6).map(|n| format!("line {n}\n")).collect();
        let mut offset = 0;
        for (n, line) in lines.iter().enumerate() {
            let marks = [(offset, 1000 + n as i64)];
            offset = writer
                .append("j", s, offset, Bytes::from(line.clone()), &marks)
                .await
                .unwrap();
            if n == 1 {
                partial.pull("j", s).await.unwrap();
            }
        }
        let whole = lines.concat();
        let listed_before = db
            .call(move |conn| crate::store::log_chunks_from(conn, "j", s, 0))
            .await
            .unwrap();
        assert_eq!(listed_before.len(), 6);
        let keys = |objects: crate::objects::Objects| async move {
            objects.keys_under("logs/j/backend").await.unwrap()
        };
        assert_eq!(keys(objects.clone()).await.len(), 6);

        assert_eq!(writer.compact("j").await.unwrap(), 6);
        let after = keys(objects.clone()).await;
        assert_eq!(after.len(), 1, "{after:?}");
        assert!(after[0].contains("-compacted-"), "{after:?}");
        assert_eq!(writer.compact("j").await.unwrap(), 0, "nothing left to do");

        // Had the first two lines: reads only the rest, from the merged object.
        partial.pull("j", s).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(partial.path("j", s)).unwrap(),
            whole
        );
        let marks: Vec<(u64, i64)> = (0..6).map(|n| (7 * n, 1000 + n as i64)).collect();
        assert_eq!(partial.marks("j", s).await, marks);
        // Listed the six chunks before they went: finds them gone, lists again.
        let stale = replica("stale");
        let copied = stale.copy_chunks("j", s, 0, listed_before).await.unwrap();
        assert!(matches!(copied, Copied::Replaced(0)));
        stale.pull("j", s).await.unwrap();
        assert_eq!(std::fs::read_to_string(stale.path("j", s)).unwrap(), whole);
        assert_eq!(stale.marks("j", s).await, marks);

        // A late append joins after the merged chunk, and compacts again.
        let end = writer
            .append("j", s, 42, Bytes::from_static(b"late\n"), &[(42, 2000)])
            .await
            .unwrap();
        assert_eq!(end, 47);
        partial.pull("j", s).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(partial.path("j", s)).unwrap(),
            format!("{whole}late\n")
        );
        assert_eq!(writer.compact("j").await.unwrap(), 2);
        let fresh = replica("fresh");
        fresh.pull("j", s).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(fresh.path("j", s)).unwrap(),
            format!("{whole}late\n")
        );
        assert_eq!(fresh.marks("j", s).await.last(), Some(&(42, 2000)));
        assert_eq!(keys(objects.clone()).await.len(), 1);
    }

    #[tokio::test]
    async fn resends_are_not_duplicated_and_gaps_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::new(dir.path().to_owned(), 16);
        let s = LogStream::Backend;
        assert_eq!(
            store
                .append("j", s, 0, Bytes::from_static(b"hello "), &[(0, 1000)])
                .await
                .unwrap(),
            6
        );
        assert_eq!(
            store
                .append("j", s, 0, Bytes::from_static(b"hello "), &[(0, 1000)])
                .await
                .unwrap(),
            6
        );
        assert_eq!(
            store
                .append(
                    "j",
                    s,
                    3,
                    Bytes::from_static(b"lo world"),
                    &[(3, 1000), (6, 2000)]
                )
                .await
                .unwrap(),
            11
        );
        let err = store
            .append("j", s, 20, Bytes::from_static(b"x"), &[])
            .await
            .unwrap_err();
        assert!(
            matches!(err, ApiError::LogGap { expected: 11, .. }),
            "{err:?}"
        );
        let err = store
            .append("j", s, 11, Bytes::from_static(b"123456"), &[])
            .await
            .unwrap_err();
        assert!(
            matches!(err, ApiError::LogLimit { limit: 16, .. }),
            "{err:?}"
        );
        let text = std::fs::read_to_string(store.path("j", s)).unwrap();
        assert_eq!(
            text, "hello world",
            "an append past the limit stores nothing"
        );
        assert_eq!(
            store.marks("j", s).await,
            [(0, 1000), (6, 2000)],
            "no mark twice"
        );
    }
}

/// When the byte at `offset` was written, by a stream's time marks (sorted by
/// offset): the mark in force there, or before the first mark the first.
pub fn time_at(marks: &[(u64, i64)], offset: u64) -> Option<i64> {
    match marks.partition_point(|&(at, _)| at <= offset) {
        0 => marks.first().map(|&(_, millis)| millis),
        n => Some(marks[n - 1].1),
    }
}

/// Prefixes each line with its time (RFC 3339, milliseconds, UTC), for readers that
/// ask for `?timestamps=true`. Feeds chunk by chunk; remembers whether the next
/// byte starts a line.
#[derive(Debug)]
pub struct Stamper {
    marks: Vec<(u64, i64)>,
    at_line_start: bool,
}

impl Stamper {
    /// `offset` is where reading starts; a line start is assumed there.
    pub fn new(marks: Vec<(u64, i64)>) -> Self {
        Self {
            marks,
            at_line_start: true,
        }
    }

    pub fn set_marks(&mut self, marks: Vec<(u64, i64)>) {
        self.marks = marks;
    }

    fn stamp(&self, offset: u64) -> String {
        match time_at(&self.marks, offset).and_then(chrono::DateTime::from_timestamp_millis) {
            Some(time) => format!("{} ", time.format("%Y-%m-%dT%H:%M:%S%.3fZ")),
            None => format!("{:24} ", ""),
        }
    }

    /// Stamps `chunk`, which starts at stream offset `offset`.
    pub fn stamp_chunk(&mut self, offset: u64, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(chunk.len() + 64);
        for (index, &byte) in chunk.iter().enumerate() {
            if self.at_line_start {
                out.extend_from_slice(self.stamp(offset + index as u64).as_bytes());
                self.at_line_start = false;
            }
            out.push(byte);
            if byte == b'\n' {
                self.at_line_start = true;
            }
        }
        out
    }
}

#[cfg(test)]
mod stamper_tests {
    use super::*;

    #[test]
    fn each_line_gets_the_time_of_the_last_mark_before_it() {
        let base = 1_764_000_000_000;
        let mut stamper = Stamper::new(vec![(0, base), (6, base + 1500)]);
        let first = stamper.stamp_chunk(0, b"first\nsec");
        let rest = stamper.stamp_chunk(9, b"ond\nthird\n");
        let text = String::from_utf8([first, rest].concat()).unwrap();
        assert_eq!(
            text,
            "2025-11-24T16:00:00.000Z first\n2025-11-24T16:00:01.500Z second\n2025-11-24T16:00:01.500Z third\n"
        );
    }
}
