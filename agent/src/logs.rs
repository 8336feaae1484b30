//! Job logs: every byte is spooled to a local file first, then shipped to the
//! control plane by offset.
//!
//! A build writes through a `LogSink`, which appends to the stream's spool file and
//! returns at once: the build never waits on the network. `ship` runs beside the
//! build and sends what the spool holds beyond the acknowledged offset, at most
//! every 250 ms or 256 KiB at a time, with backoff while the control plane is away.
//! Masking of secrets happens before a byte reaches the spool.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_protocol::LogStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::client::{Appended, Client, ClientError};
use crate::mask::Masker;

pub const SHIP_INTERVAL: Duration = Duration::from_millis(250);
pub const SHIP_CHUNK: u64 = 256 * 1024;

struct Spool {
    stream: LogStream,
    path: PathBuf,
    file: Mutex<SpoolWriter>,
    len: AtomicU64,
}

struct SpoolWriter {
    file: File,
    masker: Masker,
    /// Also print to the terminal (`kiln-agent build`).
    echo: bool,
    failed: bool,
}

/// A handle that writes one stream of one job. Cheap to clone.
#[derive(Clone)]
pub struct LogSink {
    spool: Arc<Spool>,
    written: Arc<Notify>,
}

impl std::fmt::Debug for LogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogSink")
            .field("stream", &self.spool.stream)
            .finish()
    }
}

impl LogSink {
    pub fn stream(&self) -> LogStream {
        self.spool.stream
    }

    /// Appends raw output (masked) to the spool.
    pub fn write(&self, data: &[u8]) {
        let mut writer = self.spool.file.lock().unwrap_or_else(|p| p.into_inner());
        let masked = writer.masker.push(data);
        self.append(&mut writer, &masked);
    }

    /// Writes whatever the masker still holds back (end of a step).
    pub fn flush(&self) {
        let mut writer = self.spool.file.lock().unwrap_or_else(|p| p.into_inner());
        let rest = writer.masker.finish();
        self.append(&mut writer, &rest);
    }

    fn append(&self, writer: &mut SpoolWriter, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if writer.echo {
            let prefix = match self.spool.stream {
                LogStream::System => "",
                LogStream::Backend => "backend | ",
                LogStream::Storefront => "storefront | ",
            };
            let text = String::from_utf8_lossy(data);
            let mut out = std::io::stdout().lock();
            for line in text.split_inclusive('\n') {
                let _ = write!(out, "{prefix}{line}");
            }
            let _ = out.flush();
        }
        match writer.file.write_all(data) {
            Ok(()) => {
                self.spool
                    .len
                    .fetch_add(data.len() as u64, Ordering::SeqCst);
                self.written.notify_one();
            }
            Err(error) if !writer.failed => {
                // A full disk must not kill the build; say so once, loudly.
                writer.failed = true;
                tracing::error!(message = "Cannot write log spool; log lines are being lost.", path = %self.spool.path.display(), %error);
            }
            Err(_) => {}
        }
    }

    /// A line from the agent itself, with a timestamp.
    pub fn line(&self, text: impl AsRef<str>) {
        let stamp = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
        self.write(format!("[{stamp}] {}\n", text.as_ref()).as_bytes());
        self.flush();
    }
}

/// The three streams of one job, spooled under `dir`.
pub struct JobLogs {
    dir: PathBuf,
    spools: Vec<Arc<Spool>>,
    written: Arc<Notify>,
}

impl JobLogs {
    /// Creates (or reopens, after a restart) the spool files in `dir`.
    pub fn open(dir: &Path, secrets: &[String], echo: bool) -> std::io::Result<JobLogs> {
        std::fs::create_dir_all(dir)?;
        let mut spools = Vec::new();
        for stream in LogStream::ALL {
            let path = dir.join(format!("{stream}.log"));
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            let len = file.metadata()?.len();
            spools.push(Arc::new(Spool {
                stream,
                path,
                file: Mutex::new(SpoolWriter {
                    file,
                    masker: Masker::new(secrets),
                    echo,
                    failed: false,
                }),
                len: AtomicU64::new(len),
            }));
        }
        Ok(JobLogs {
            dir: dir.to_owned(),
            spools,
            written: Arc::new(Notify::new()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn sink(&self, stream: LogStream) -> LogSink {
        let spool = self
            .spools
            .iter()
            .find(|spool| spool.stream == stream)
            .expect("every stream has a spool")
            .clone();
        LogSink {
            spool,
            written: self.written.clone(),
        }
    }

    /// Total bytes spooled, for metrics and tests.
    pub fn spooled(&self, stream: LogStream) -> u64 {
        self.sink(stream).spool.len.load(Ordering::SeqCst)
    }

    /// Ships the spool to the control plane until `finish` is canceled and
    /// everything has been delivered, or until `give_up` is canceled.
    /// Returns whether every spooled byte was acknowledged.
    ///
    /// Full chunks go back to back; a partial chunk waits up to `SHIP_INTERVAL` for
    /// more output, so a chatty build costs a request per 250 ms, not per line.
    pub async fn ship(
        &self,
        client: &Client,
        job_id: &str,
        finish: CancellationToken,
        give_up: CancellationToken,
    ) -> bool {
        let mut acked: Vec<Option<u64>> = vec![None; self.spools.len()];
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        loop {
            let mut failed = false;
            'streams: for (index, spool) in self.spools.iter().enumerate() {
                loop {
                    if give_up.is_cancelled() {
                        return false;
                    }
                    match ship_stream(client, job_id, spool, &mut acked[index]).await {
                        Ok(pending) if pending >= SHIP_CHUNK => continue,
                        Ok(_) => break,
                        Err(error) if error.is_transient() => {
                            failed = true;
                            tracing::warn!(message = "Log upload failed; retrying.", stream = %spool.stream, %error);
                            break 'streams;
                        }
                        Err(error) => {
                            tracing::error!(message = "Control plane refused logs; giving up on this job's logs.", stream = %spool.stream, %error);
                            return false;
                        }
                    }
                }
            }
            let pending: u64 = self
                .spools
                .iter()
                .zip(&acked)
                .map(|(spool, acked)| {
                    spool
                        .len
                        .load(Ordering::SeqCst)
                        .saturating_sub(acked.unwrap_or(0))
                })
                .sum();
            if !failed && pending == 0 && finish.is_cancelled() {
                return true;
            }
            if failed {
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = give_up.cancelled() => return false,
                }
                continue;
            }
            backoff.reset();
            if pending == 0 {
                // Idle until the build writes again (or the job ends).
                tokio::select! {
                    _ = self.written.notified() => {}
                    _ = finish.cancelled() => continue,
                    _ = give_up.cancelled() => return false,
                }
            }
            // Let a partial chunk fill up for a moment, unless the job has ended.
            tokio::select! {
                _ = tokio::time::sleep(SHIP_INTERVAL) => {}
                _ = finish.cancelled() => {}
                _ = give_up.cancelled() => return false,
            }
        }
    }
}

/// Sends one chunk of a stream; returns how many spooled bytes are still unsent.
async fn ship_stream(
    client: &Client,
    job_id: &str,
    spool: &Spool,
    acked: &mut Option<u64>,
) -> Result<u64, ClientError> {
    let offset = match *acked {
        Some(offset) => offset,
        // First contact (or after a restart): ask where the server's copy ends.
        None => match client
            .append_log(job_id, spool.stream, 0, bytes::Bytes::new())
            .await?
        {
            Appended::Upto(end) | Appended::Expected(end) => *acked.insert(end),
        },
    };
    let len = spool.len.load(Ordering::SeqCst);
    if offset >= len {
        return Ok(0);
    }
    let size = (len - offset).min(SHIP_CHUNK) as usize;
    let chunk = read_at(&spool.path, offset, size).map_err(|e| ClientError::ReadFile {
        path: spool.path.display().to_string(),
        source: e,
    })?;
    match client
        .append_log(job_id, spool.stream, offset, chunk.into())
        .await?
    {
        Appended::Upto(end) | Appended::Expected(end) => *acked = Some(end),
    }
    Ok(spool
        .len
        .load(Ordering::SeqCst)
        .saturating_sub(acked.unwrap_or(0)))
}

fn read_at(path: &Path, offset: u64, size: usize) -> std::io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let mut buf = vec![0; size];
    let mut filled = 0;
    while filled < size {
        let n = file.read_at(&mut buf[filled..], offset + filled as u64)?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    buf.truncate(filled);
    Ok(buf)
}
