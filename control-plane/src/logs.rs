//! Log storage: one append-only file per job and stream under `<data>/logs`.
//!
//! The file's length is the stream's offset, so an append is idempotent by offset
//! and survives a restart without any index. An acknowledged append is on disk
//! (fsync) before the agent hears "ok", so a crash loses nothing the agent dropped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kiln_protocol::LogStream;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::Notify;

use crate::error::ApiError;

type StreamKey = (String, LogStream);

#[derive(Debug)]
pub struct LogStore {
    root: PathBuf,
    // One writer per stream at a time; different streams append in parallel.
    locks: Mutex<HashMap<StreamKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Woken on every append, for readers that follow a stream live.
    pub appended: Notify,
}

impl LogStore {
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            locks: Mutex::default(),
            appended: Notify::new(),
        }
    }

    pub fn path(&self, job_id: &str, stream: LogStream) -> PathBuf {
        self.root.join(job_id).join(format!("{stream}.log"))
    }

    fn lock_for(&self, job_id: &str, stream: LogStream) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
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
        data: &[u8],
    ) -> Result<u64, ApiError> {
        let lock = self.lock_for(job_id, stream);
        let _guard = lock.lock().await;
        let path = self.path(job_id, stream);
        let len = file_len(&path).await?;
        if offset > len {
            return Err(ApiError::LogGap {
                job_id: job_id.to_owned(),
                stream,
                offset,
                expected: len,
            });
        }
        let known = (len - offset) as usize;
        if known >= data.len() {
            return Ok(len);
        }
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .await?;
        // Write at the verified length rather than O_APPEND, so a torn write from a
        // crash is simply overwritten by the agent's resend.
        file.seek(std::io::SeekFrom::Start(len)).await?;
        file.write_all(&data[known..]).await?;
        file.sync_data().await?;
        let new_len = len + (data.len() - known) as u64;
        self.appended.notify_waiters();
        Ok(new_len)
    }
}

async fn file_len(path: &Path) -> Result<u64, ApiError> {
    match tokio::fs::metadata(path).await {
        Ok(meta) => Ok(meta.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resends_are_not_duplicated_and_gaps_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::new(dir.path().to_owned());
        let s = LogStream::Backend;
        assert_eq!(store.append("j", s, 0, b"hello ").await.unwrap(), 6);
        assert_eq!(store.append("j", s, 0, b"hello ").await.unwrap(), 6);
        assert_eq!(store.append("j", s, 3, b"lo world").await.unwrap(), 11);
        let err = store.append("j", s, 20, b"x").await.unwrap_err();
        assert!(
            matches!(err, ApiError::LogGap { expected: 11, .. }),
            "{err:?}"
        );
        let text = std::fs::read_to_string(store.path("j", s)).unwrap();
        assert_eq!(text, "hello world");
    }
}
