//! Job logs: every byte is spooled to a local file first, then shipped to the
//! control plane by offset.
//!
//! A build writes through a `LogSink`, which appends to the stream's spool file and
//! returns at once: the build never waits on the network. `JobLogs::ship` runs
//! beside the build and sends what the spool holds beyond the acknowledged offset:
//! full 1 MiB chunks back to back (from memory while the newest bytes are still
//! there, else from the file) and a partial one at most every 250 ms, with backoff
//! while the control plane is away.
//!
//! Before a byte reaches the spool, secrets are masked; past the per-stream limit,
//! output is dropped after one truncation line. Beside each spool, a `.times` file
//! records when output was written (offset → time marks, at most one per 100 ms),
//! so every line gets its timestamp without changing the log's bytes.
//!
//! When the disk is full, output waits in memory (up to `UNSPOOLED_MAX` a stream)
//! and still ships from there; it reaches the file once a write succeeds again.
//! Past that bound output is dropped, and the log says where and how much.

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
use crate::config::ByteSize;
use crate::mask::Masker;

/// How long finished logs wait to reach a control plane that is away; after
/// that the spool stays on disk and is delivered by the next start.
pub(crate) const LOG_DRAIN_LIMIT: Duration = Duration::from_secs(120);
pub const SHIP_INTERVAL: Duration = Duration::from_millis(250);
pub const SHIP_CHUNK: u64 = 1024 * 1024;
/// The spool's newest bytes kept in memory too, so shipping a chunk the build has
/// just written needs no read of the file.
const RECENT: usize = 2 * SHIP_CHUNK as usize;
/// Time marks closer than this share the earlier mark.
const MARK_EVERY_MS: i64 = 100;
/// Marks sent with one chunk, to keep the header small; a chunk is cut shorter.
const MARKS_PER_CHUNK: usize = 256;
/// Output a stream holds in memory while its spool cannot be written (a full
/// disk): a failing step's last words, which say why it failed, fit. Small in
/// tests, so the bound is reached.
const UNSPOOLED_MAX: u64 = if cfg!(test) { 64 << 10 } else { 16 << 20 };
/// How often a stream holding output in memory tries its spool file again.
const UNSPOOLED_RETRY: Duration = if cfg!(test) {
    Duration::ZERO
} else {
    Duration::from_secs(1)
};

/// How a job's logs are written.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Values masked as `***` (with their base64 forms).
    pub secrets: Vec<String>,
    /// Also print to the terminal (`kiln-agent build`).
    pub echo: bool,
    /// Bytes kept per stream; later output is dropped after a truncation line.
    pub limit: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            secrets: Vec::new(),
            echo: false,
            limit: 100 << 20,
        }
    }
}

struct Spool {
    stream: LogStream,
    path: PathBuf,
    writer: Mutex<SpoolWriter>,
    len: AtomicU64,
}

struct SpoolWriter {
    file: File,
    /// The spool's last bytes (up to `2 * RECENT`), starting at `recent_start`;
    /// a ring, so dropping the oldest moves nothing.
    recent: std::collections::VecDeque<u8>,
    recent_start: u64,
    times: File,
    marks: Vec<(u64, i64)>,
    masker: Masker,
    echo: bool,
    limit: u64,
    truncated: bool,
    /// Where the bytes that only memory holds begin (the file's length), while
    /// the spool cannot be written.
    unspooled_from: Option<u64>,
    /// When a write to the file was last tried and failed.
    last_try: std::time::Instant,
    /// Output dropped since memory filled up, not yet said in the log.
    dropped: u64,
    /// The next write is time-marked however soon after the last mark it comes.
    mark_next: bool,
}

impl SpoolWriter {
    /// Keeps what was just written in memory, dropping the oldest beyond `RECENT`
    /// (in steps, so the copy is amortised) but never bytes the file lacks.
    fn remember(&mut self, bytes: &[u8]) {
        self.recent.extend(bytes);
        if self.recent.len() > 2 * RECENT {
            let mut cut = (self.recent.len() - RECENT) as u64;
            if let Some(from) = self.unspooled_from {
                cut = cut.min(from - self.recent_start);
            }
            self.recent.drain(..cut as usize);
            self.recent_start += cut;
        }
    }

    /// Writes what only memory holds to the file, if the disk has room again;
    /// tried at most every `UNSPOOLED_RETRY`, as a full disk stays full a while.
    /// Returns whether it did.
    fn spool_backlog(&mut self) -> bool {
        let Some(from) = self.unspooled_from else {
            return false;
        };
        if self.last_try.elapsed() < UNSPOOLED_RETRY {
            return false;
        }
        self.last_try = std::time::Instant::now();
        let backlog = self
            .recent_bytes(
                from,
                (self.recent_start + self.recent.len() as u64 - from) as usize,
            )
            .unwrap_or_default();
        if append_or_cut(&mut self.file, from, &backlog).is_err() {
            return false;
        }
        self.unspooled_from = None;
        true
    }

    /// `size` bytes from `offset`, if all of them are still in memory.
    fn recent_bytes(&self, offset: u64, size: usize) -> Option<Vec<u8>> {
        let from = usize::try_from(offset.checked_sub(self.recent_start)?).ok()?;
        if from + size > self.recent.len() {
            return None;
        }
        let (front, back) = self.recent.as_slices();
        let mut bytes = Vec::with_capacity(size);
        let end = from + size;
        if from < front.len() {
            bytes.extend_from_slice(&front[from..end.min(front.len())]);
        }
        if end > front.len() {
            bytes.extend_from_slice(&back[from.saturating_sub(front.len())..end - front.len()]);
        }
        Some(bytes)
    }
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
    /// Appends raw output (masked) to the spool.
    pub fn write(&self, data: &[u8]) {
        let mut writer = crate::lock(&self.spool.writer);
        let masked = writer.masker.push(data);
        self.append(&mut writer, &masked);
    }

    /// Time-marks the next output however soon it comes: a step's first
    /// output, so where the step began is known to the byte.
    pub fn mark_next_write(&self) {
        crate::lock(&self.spool.writer).mark_next = true;
    }

    /// Writes whatever the masker still holds back (end of a step).
    pub fn flush(&self) {
        let mut writer = crate::lock(&self.spool.writer);
        let rest = writer.masker.finish();
        self.append(&mut writer, &rest);
    }

    fn append(&self, writer: &mut SpoolWriter, data: &[u8]) {
        if data.is_empty() || writer.truncated {
            return;
        }
        if writer.spool_backlog() {
            tracing::info!(message = "Log spool writable again.", path = %self.spool.path.display());
            if writer.dropped > 0 {
                let notice = format!(
                    "\n[kiln] {} of output was dropped here while the build host's disk was full.\n",
                    ByteSize(std::mem::take(&mut writer.dropped))
                );
                self.store(writer, notice.as_bytes());
            }
        }
        let len = self.spool.len.load(Ordering::SeqCst);
        let room = writer.limit.saturating_sub(len) as usize;
        let (kept, over) = if data.len() > room {
            (&data[..room], true)
        } else {
            (data, false)
        };
        if writer.echo {
            echo(self.spool.stream, kept);
        }
        if writer.dropped > 0 {
            writer.dropped += kept.len() as u64;
            return;
        }
        self.store(writer, kept);
        if over {
            writer.truncated = true;
            let notice = format!(
                "\n[kiln] The {} log reached its limit of {}; later output is dropped. The build goes on.\n",
                self.spool.stream,
                ByteSize(writer.limit)
            );
            self.store(writer, notice.as_bytes());
        }
    }

    /// Puts `bytes` at the spool's end, with a time mark: in the file and in
    /// memory, or in memory alone while the file cannot take them.
    fn store(&self, writer: &mut SpoolWriter, bytes: &[u8]) {
        let len = self.spool.len.load(Ordering::SeqCst);
        if let Some(from) = writer.unspooled_from {
            if len - from + bytes.len() as u64 > UNSPOOLED_MAX {
                // Said in the log itself, so its reader knows output is missing.
                writer.dropped = bytes.len() as u64;
                tracing::error!(message = "Log spool still unwritable and its memory is full; dropping output until the disk has room.", path = %self.spool.path.display());
                let notice = format!(
                    "\n[kiln] The build host's disk is full and {} of this log waits in memory; later output is dropped until the disk has room.\n",
                    ByteSize(len - from)
                );
                self.keep(writer, len, notice.as_bytes());
                return;
            }
        } else if let Err(error) = append_or_cut(&mut writer.file, len, bytes) {
            // A full disk must not kill the build, nor lose its last words.
            writer.unspooled_from = Some(len);
            writer.last_try = std::time::Instant::now();
            tracing::error!(message = "Cannot write log spool; holding its output in memory until the disk has room.", path = %self.spool.path.display(), %error);
        }
        self.keep(writer, len, bytes);
    }

    /// Counts `bytes`, written at `len`, as spooled: remembered, time-marked,
    /// and announced to the shipper.
    fn keep(&self, writer: &mut SpoolWriter, len: u64, bytes: &[u8]) {
        let now = chrono::Utc::now().timestamp_millis();
        if std::mem::take(&mut writer.mark_next)
            || writer
                .marks
                .last()
                .is_none_or(|&(_, last)| now - last >= MARK_EVERY_MS)
        {
            writer.marks.push((len, now));
            let _ = writer
                .times
                .write_all(kiln_protocol::time_mark_line(len, now).as_bytes());
        }
        writer.remember(bytes);
        self.spool
            .len
            .fetch_add(bytes.len() as u64, Ordering::SeqCst);
        self.written.notify_one();
    }

    /// Bytes spooled so far: where the next write lands.
    pub fn len(&self) -> u64 {
        self.spool.len.load(Ordering::SeqCst)
    }

    /// What was spooled from `offset` on, at most its last `max` bytes: what a
    /// failed step printed, for telling what went wrong.
    pub fn tail_since(&self, offset: u64, max: u64) -> Vec<u8> {
        let writer = crate::lock(&self.spool.writer);
        let end = self.len();
        let start = offset.max(end.saturating_sub(max));
        let size = (end - start.min(end)) as usize;
        writer
            .recent_bytes(start, size)
            .unwrap_or_else(|| read_at(&self.spool.path, start, size).unwrap_or_default())
    }

    /// A line from the agent itself, with a timestamp.
    pub fn line(&self, text: impl AsRef<str>) {
        let stamp = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
        self.write(format!("[{stamp}] {}\n", text.as_ref()).as_bytes());
        self.flush();
    }
}

fn echo(stream: LogStream, data: &[u8]) {
    let prefix = match stream {
        LogStream::System => "",
        LogStream::Backend => "backend | ",
        LogStream::Storefront => "storefront | ",
        LogStream::Deploy => "deploy | ",
        LogStream::Runtime => "runtime | ",
    };
    let text = String::from_utf8_lossy(data);
    let mut out = std::io::stdout().lock();
    for line in text.split_inclusive('\n') {
        let _ = write!(out, "{prefix}{line}");
    }
    let _ = out.flush();
}

fn read_marks(path: &Path) -> Vec<(u64, i64)> {
    kiln_protocol::parse_time_mark_lines(&std::fs::read_to_string(path).unwrap_or_default())
}

/// The three streams of one job, spooled under `dir`.
pub struct JobLogs {
    spools: Vec<Arc<Spool>>,
    written: Arc<Notify>,
}

impl JobLogs {
    /// Creates (or reopens, after a restart) the spool files in `dir`.
    pub fn open(dir: &Path, options: &LogOptions) -> std::io::Result<JobLogs> {
        std::fs::create_dir_all(dir)?;
        let mut spools = Vec::new();
        for stream in LogStream::ALL {
            let path = dir.join(format!("{stream}.log"));
            let times_path = dir.join(format!("{stream}.times"));
            let open = |path: &Path| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
            };
            let file = open(&path)?;
            let len = file.metadata()?.len();
            spools.push(Arc::new(Spool {
                stream,
                writer: Mutex::new(SpoolWriter {
                    file,
                    // A reopened spool ships its older bytes from the file.
                    recent: Default::default(),
                    recent_start: len,
                    marks: read_marks(&times_path),
                    times: open(&times_path)?,
                    masker: Masker::new(&options.secrets),
                    echo: options.echo,
                    limit: options.limit,
                    truncated: len >= options.limit,
                    unspooled_from: None,
                    last_try: std::time::Instant::now(),
                    dropped: 0,
                    mark_next: false,
                }),
                path,
                len: AtomicU64::new(len),
            }));
        }
        Ok(JobLogs {
            spools,
            written: Arc::new(Notify::new()),
        })
    }

    /// Masks `secret` too in every stream from now on: one the build made
    /// after the log began (a key it hands to the build).
    pub fn mask_also(&self, secret: &str) {
        for spool in &self.spools {
            crate::lock(&spool.writer).masker.also(secret);
        }
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

    /// Total bytes spooled.
    #[cfg(test)]
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
            .append_log(job_id, spool.stream, 0, bytes::Bytes::new(), &[])
            .await?
        {
            Appended::Upto(end) | Appended::Expected(end) => *acked.insert(end),
        },
    };
    let len = spool.len.load(Ordering::SeqCst);
    if offset >= len {
        return Ok(0);
    }
    let mut size = (len - offset).min(SHIP_CHUNK);
    let (mut marks, in_memory) = {
        let writer = crate::lock(&spool.writer);
        let from = writer.marks.partition_point(|&(at, _)| at < offset);
        let mut marks: Vec<(u64, i64)> = writer.marks[from..]
            .iter()
            .copied()
            .take_while(|&(at, _)| at < offset + size)
            .collect();
        if marks.len() > MARKS_PER_CHUNK {
            size = marks[MARKS_PER_CHUNK].0 - offset;
            marks.truncate(MARKS_PER_CHUNK);
        }
        // The chunk's first byte gets the time in force there, so the server always
        // knows when a chunk's first line was written.
        if marks.first().is_none_or(|&(at, _)| at > offset) {
            if let Some(&(_, millis)) = writer.marks[..from].last() {
                marks.insert(0, (offset, millis));
            }
        }
        (marks, writer.recent_bytes(offset, size as usize))
    };
    let chunk = match in_memory {
        Some(chunk) => chunk,
        None => read_at(&spool.path, offset, size as usize).map_err(|e| ClientError::ReadFile {
            path: spool.path.display().to_string(),
            source: e,
        })?,
    };
    let sent = chunk.len() as u64;
    // The file ends short of the chunk while the disk is full (the rest waits in
    // memory): its marks go with the bytes they mark.
    marks.retain(|&(at, _)| at < offset + sent);
    match client
        .append_log(job_id, spool.stream, offset, chunk.into(), &marks)
        .await?
    {
        Appended::Upto(end) => {
            crate::metrics::metrics()
                .logged(spool.stream.as_str(), end.saturating_sub(offset).min(sent));
            *acked = Some(end)
        }
        Appended::Expected(end) => *acked = Some(end),
    }
    Ok(spool
        .len
        .load(Ordering::SeqCst)
        .saturating_sub(acked.unwrap_or(0)))
}

/// Appends `bytes` to `file`, `file_len` long; a failed write is cut off again,
/// so the file's length stays the offset of its end.
fn append_or_cut(file: &mut File, file_len: u64, bytes: &[u8]) -> std::io::Result<()> {
    file.write_all(bytes).inspect_err(|_| {
        let _ = file.set_len(file_len);
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_past_the_limit_is_dropped_after_one_clear_line() {
        let dir = tempfile::tempdir().unwrap();
        let logs = JobLogs::open(
            dir.path(),
            &LogOptions {
                limit: 10,
                ..Default::default()
            },
        )
        .unwrap();
        let sink = logs.sink(LogStream::Backend);
        sink.write(b"0123456");
        sink.write(b"789abcdef");
        sink.write(b"more and more");
        let text = std::fs::read_to_string(dir.path().join("backend.log")).unwrap();
        assert!(
            text.starts_with("0123456789\n[kiln] The backend log reached its limit of 10 B"),
            "{text}"
        );
        assert_eq!(text.matches("[kiln]").count(), 1);
        assert!(!text.contains("more"));
    }

    proptest::proptest! {
        #[test]
        fn what_memory_ships_is_what_the_file_holds(
            writes in proptest::collection::vec(1usize..(700 << 10), 1..12),
            at in 0.0f64..1.0,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let logs = JobLogs::open(dir.path(), &LogOptions { limit: u64::MAX, ..Default::default() }).unwrap();
            let sink = logs.sink(LogStream::Backend);
            for (index, size) in writes.iter().enumerate() {
                sink.write(&vec![b'a' + (index % 26) as u8; *size]);
            }
            let len = sink.len();
            let offset = (len as f64 * at) as u64;
            let size = (len - offset).min(SHIP_CHUNK) as usize;
            let from_file = read_at(&dir.path().join("backend.log"), offset, size).unwrap();
            let writer = crate::lock(&sink.spool.writer);
            if let Some(from_memory) = writer.recent_bytes(offset, size) {
                proptest::prop_assert_eq!(from_memory, from_file);
            } else {
                proptest::prop_assert!(offset < writer.recent_start, "the newest bytes are in memory");
            }
        }
    }

    /// Fills the disk under `dir` up with one file.
    fn fill(dir: &Path) {
        let mut filler = File::create(dir.join("filler")).unwrap();
        while filler.write_all(&[0; 4096]).is_ok() {}
    }

    fn free(dir: &Path) {
        std::fs::remove_file(dir.join("filler")).unwrap();
    }

    #[test]
    fn a_full_disk_holds_output_in_memory_and_says_what_it_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let Some(_disk) = crate::testing::SmallDisk::mount(dir.path(), "1m") else {
            return;
        };
        let logs = JobLogs::open(&dir.path().join("spool"), &LogOptions::default()).unwrap();
        let sink = logs.sink(LogStream::Backend);
        let spool = dir.path().join("spool/backend.log");
        let mut written = Vec::new();
        fn write(sink: &LogSink, written: &mut Vec<u8>, data: &[u8]) {
            sink.write(data);
            written.extend_from_slice(data);
        }
        // A tmpfs fills by pages: the spool ends on one, so the next byte needs room.
        let to_page_end = |len: u64| {
            let mut line = vec![b'.'; (4096 - len % 4096) as usize];
            *line.last_mut().unwrap() = b'\n';
            line
        };
        write(&sink, &mut written, &to_page_end(0));
        fill(dir.path());
        // A failing step's last words, with the disk full.
        write(
            &sink,
            &mut written,
            b"Error: ENOSPC: no space left on device\n",
        );
        assert_eq!(std::fs::read(&spool).unwrap().len(), 4096);
        assert_eq!(sink.len(), written.len() as u64);
        assert_eq!(sink.tail_since(4096, 1 << 20), &written[4096..]);
        // What the shipper sends comes from memory.
        let writer = crate::lock(&sink.spool.writer);
        assert_eq!(writer.recent_bytes(0, written.len()).unwrap(), written);
        drop(writer);

        // Room again: the next write puts what waited in memory in the file first.
        free(dir.path());
        write(&sink, &mut written, b"after\n");
        assert_eq!(std::fs::read(&spool).unwrap(), written);

        // Full for longer than memory holds: the rest is dropped, and the log says
        // where it stopped and how much went missing.
        write(&sink, &mut written, &to_page_end(sink.len()));
        fill(dir.path());
        let line = [b'x'; 1023]
            .iter()
            .chain(b"\n")
            .copied()
            .collect::<Vec<u8>>();
        for _ in 0..UNSPOOLED_MAX / 1024 {
            write(&sink, &mut written, &line);
        }
        for _ in 0..10 {
            sink.write(&line);
        }
        free(dir.path());
        sink.write(b"the end\n");
        let text = std::fs::read(&spool).unwrap();
        assert_eq!(text.len() as u64, sink.len());
        assert_eq!(&text[..written.len()], written);
        assert_eq!(
            String::from_utf8_lossy(&text[written.len()..]),
            "\n[kiln] The build host's disk is full and 64 KiB of this log waits in memory; later output is dropped until the disk has room.\n\n[kiln] 10 KiB of output was dropped here while the build host's disk was full.\nthe end\n"
        );
    }

    #[test]
    fn writes_leave_time_marks_that_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let logs = JobLogs::open(dir.path(), &LogOptions::default()).unwrap();
        let sink = logs.sink(LogStream::Backend);
        sink.write(b"first\n");
        std::thread::sleep(Duration::from_millis(120));
        sink.write(b"second\n");
        drop(logs);
        let marks = read_marks(&dir.path().join("backend.times"));
        assert_eq!(marks.len(), 2);
        assert_eq!((marks[0].0, marks[1].0), (0, 6));
        assert!(marks[1].1 - marks[0].1 >= 100);
        let reopened = JobLogs::open(dir.path(), &LogOptions::default()).unwrap();
        assert_eq!(reopened.spooled(LogStream::Backend), 13);
    }

    #[test]
    fn a_steps_first_output_is_marked_however_soon_it_comes() {
        let dir = tempfile::tempdir().unwrap();
        let logs = JobLogs::open(dir.path(), &LogOptions::default()).unwrap();
        let sink = logs.sink(LogStream::Backend);
        sink.write(b"install's last line\n");
        sink.mark_next_write();
        sink.write(b"build's first line\n");
        sink.write(b"build's second line\n");
        drop(logs);
        let offsets: Vec<u64> = read_marks(&dir.path().join("backend.times"))
            .into_iter()
            .map(|(offset, _)| offset)
            .collect();
        assert_eq!(offsets, [0, 20]);
    }
}
