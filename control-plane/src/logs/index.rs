//! Lines of a stored log, for the dashboard's viewer: where each line starts,
//! without holding the log. The index is built as the log grows (a log is
//! append-only): every `EVERY` lines it keeps the offset of a line's first byte,
//! and it notes the lines that open or close a section (GitLab's
//! `section_start:`/`section_end:`, GitHub's `::group::`/`::endgroup::`,
//! Buildkite's `---`/`+++`/`~~~`). A 200 MB log is indexed once, in one pass of
//! `memchr`, then each window of lines costs one seek.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde::Serialize;

/// Lines between two remembered line starts.
const EVERY: u64 = 512;
/// Bytes read per pass when indexing.
const READ: usize = 1 << 20;
/// The longest line the viewer shows whole; longer ones are cut there.
pub const MAX_LINE: usize = 64 << 10;
/// The most bytes of lines one window holds: a window of long lines is
/// shorter, so a reader never builds a huge answer.
pub const MAX_WINDOW_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Marker {
    /// A section begins here, with this title.
    Open { title: String, key: Option<String> },
    /// The innermost open section (or the one with this key) ends here.
    Close { key: Option<String> },
    /// Buildkite: a new section begins and the previous one ends.
    Heading { title: String },
}

#[derive(Debug, Default)]
pub struct LineIndex {
    /// Bytes of the log read so far.
    scanned: u64,
    /// Where the line in progress begins: just past the last `\n` read.
    complete: u64,
    /// Complete lines (ended by `\n`) in what was read.
    lines: u64,
    /// `starts[k]` is where line `k * EVERY` begins.
    starts: Vec<u64>,
    markers: Vec<(u64, Marker)>,
}

/// A section of a log, in line numbers (0-based, `end` exclusive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Section {
    pub title: String,
    pub start: u64,
    pub end: u64,
}

/// A window of a log's lines.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    /// Lines in the log, the last one counted even when no `\n` ends it yet.
    pub total: u64,
    /// The log's length in bytes.
    pub size: u64,
    /// Whether the last line has no `\n` yet (more of it may come).
    pub partial: bool,
    /// The number of the first line in `lines`.
    pub first: u64,
    pub lines: Vec<String>,
    /// Where each line starts, for its time.
    #[serde(skip)]
    pub offsets: Vec<u64>,
}

/// Strips what terminals would not print at a line's start: `\r`, and escape
/// sequences such as GitLab's `\e[0K`.
fn visible_start(line: &[u8]) -> &[u8] {
    let mut rest = line;
    loop {
        match rest {
            [b'\r', tail @ ..] => rest = tail,
            [0x1b, b'[', tail @ ..] => {
                let end = tail
                    .iter()
                    .position(|b| b.is_ascii_alphabetic())
                    .map_or(tail.len(), |at| at + 1);
                rest = &tail[end..];
            }
            _ => return rest,
        }
    }
}

fn marker(line: &[u8]) -> Option<Marker> {
    let line = visible_start(line);
    let text = |bytes: &[u8]| {
        String::from_utf8_lossy(visible_start(bytes))
            .trim_end_matches(['\r', '\n'])
            .trim()
            .to_owned()
    };
    if let Some(rest) = line.strip_prefix(b"section_start:") {
        // section_start:<unix time>:<name>[collapsed=true]\r\e[0K<title>
        let mut parts = rest.splitn(2, |b| *b == b':');
        parts.next()?;
        let name_and_title = parts.next()?;
        let (name, title) = match name_and_title.iter().position(|b| *b == b'\r') {
            Some(at) => (&name_and_title[..at], text(&name_and_title[at..])),
            None => (name_and_title, String::new()),
        };
        let key = text(name.split(|b| *b == b'[').next().unwrap_or(name));
        let title = if title.is_empty() { key.clone() } else { title };
        return Some(Marker::Open {
            title,
            key: Some(key),
        });
    }
    if let Some(rest) = line.strip_prefix(b"section_end:") {
        let mut parts = rest.splitn(2, |b| *b == b':');
        parts.next()?;
        let key = parts
            .next()
            .map(|name| text(name.split(|b| *b == b'\r').next().unwrap_or(name)))
            .filter(|key| !key.is_empty());
        return Some(Marker::Close { key });
    }
    if let Some(title) = line.strip_prefix(b"::group::") {
        return Some(Marker::Open {
            title: text(title),
            key: None,
        });
    }
    if line.starts_with(b"::endgroup::") {
        return Some(Marker::Close { key: None });
    }
    for heading in [b"--- ", b"+++ ", b"~~~ "] {
        if let Some(title) = line.strip_prefix(heading.as_slice()) {
            return Some(Marker::Heading { title: text(title) });
        }
    }
    None
}

impl LineIndex {
    /// Reads what was appended to the log at `path` since the last call.
    pub fn catch_up(&mut self, path: &Path) -> std::io::Result<()> {
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error),
        };
        let size = file.metadata()?.len();
        if size <= self.scanned {
            return Ok(());
        }
        // Read again from the start of the line in progress: its first bytes may
        // make it a marker.
        file.seek(SeekFrom::Start(self.complete))?;
        let mut reader = file.take(size - self.complete);
        let mut buffer = vec![0u8; READ];
        let mut head: Vec<u8> = Vec::new();
        let mut position = self.complete;
        loop {
            let read = reader.read(&mut buffer)?;
            if read == 0 {
                break;
            }
            let chunk = &buffer[..read];
            let mut from = 0;
            for newline in memchr::memchr_iter(b'\n', chunk) {
                if self.lines % EVERY == 0 {
                    self.starts.push(self.complete);
                }
                let found = if head.is_empty() {
                    marker(&chunk[from..newline.min(from + 512)])
                } else {
                    let wanted = 512usize.saturating_sub(head.len());
                    head.extend_from_slice(&chunk[from..newline.min(from + wanted)]);
                    marker(&head)
                };
                if let Some(found) = found {
                    self.markers.push((self.lines, found));
                }
                self.lines += 1;
                head.clear();
                from = newline + 1;
                self.complete = position + from as u64;
            }
            // Only a line's first bytes decide a marker; keep no more of it.
            let rest = &chunk[from..];
            let wanted = 512usize.saturating_sub(head.len());
            head.extend_from_slice(&rest[..rest.len().min(wanted)]);
            position += read as u64;
        }
        self.scanned = position;
        Ok(())
    }

    /// Lines counted, and whether a last line without `\n` follows them.
    fn total(&self) -> (u64, bool) {
        let partial = self.complete < self.scanned;
        (self.lines + u64::from(partial), partial)
    }

    /// Reads `count` lines from line `first` of the log at `path` (indexed up to
    /// now), each cut at `MAX_LINE` bytes, holding at most `MAX_WINDOW_BYTES` of
    /// them (and always one): the first lines of the range, or with `keep_end`
    /// the last ones (a tail).
    pub fn window(
        &self,
        path: &Path,
        first: u64,
        count: u64,
        keep_end: bool,
    ) -> std::io::Result<Window> {
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Window {
                    total: 0,
                    size: 0,
                    partial: false,
                    first: 0,
                    lines: Vec::new(),
                    offsets: Vec::new(),
                })
            }
            Err(error) => return Err(error),
        };
        let (total, partial) = self.total();
        let first = first.min(total);
        let count = count.min(total - first);
        let mut lines = std::collections::VecDeque::new();
        let mut offsets = std::collections::VecDeque::new();
        let mut held = 0usize;
        let mut shown_first = first;
        if count > 0 {
            let checkpoint = (first / EVERY) as usize;
            let mut line = checkpoint as u64 * EVERY;
            let mut offset = self.starts.get(checkpoint).copied().unwrap_or(0);
            file.seek(SeekFrom::Start(offset))?;
            let mut reader =
                std::io::BufReader::with_capacity(256 << 10, file.take(self.scanned - offset));
            let mut current = Vec::new();
            while line < first + count {
                current.clear();
                let read = read_line(&mut reader, &mut current)?;
                if read == 0 {
                    break;
                }
                if line >= first {
                    let shown = current.strip_suffix(b"\n").unwrap_or(&current);
                    if !keep_end && held + shown.len() > MAX_WINDOW_BYTES && !lines.is_empty() {
                        break;
                    }
                    held += shown.len();
                    lines.push_back(String::from_utf8_lossy(shown).into_owned());
                    offsets.push_back(offset);
                    while keep_end && held > MAX_WINDOW_BYTES && lines.len() > 1 {
                        held -= lines.pop_front().map_or(0, |line| line.len());
                        offsets.pop_front();
                        shown_first += 1;
                    }
                }
                offset += read as u64;
                line += 1;
            }
        }
        Ok(Window {
            total,
            size: self.scanned,
            partial,
            first: shown_first,
            lines: lines.into(),
            offsets: offsets.into(),
        })
    }

    /// The numbers of the lines holding each byte of `offsets` (ascending).
    pub fn lines_at(&self, path: &Path, offsets: &[u64]) -> std::io::Result<Vec<u64>> {
        let mut found = Vec::with_capacity(offsets.len());
        let Ok(mut file) = File::open(path) else {
            return Ok(vec![0; offsets.len()]);
        };
        let mut buffer = vec![0u8; READ];
        for &offset in offsets {
            let offset = offset.min(self.scanned);
            let checkpoint = self
                .starts
                .partition_point(|&start| start <= offset)
                .saturating_sub(1);
            let mut line = checkpoint as u64 * EVERY;
            let mut at = self.starts.get(checkpoint).copied().unwrap_or(0);
            file.seek(SeekFrom::Start(at))?;
            while at < offset {
                let wanted = ((offset - at) as usize).min(READ);
                let read = file.read(&mut buffer[..wanted])?;
                if read == 0 {
                    break;
                }
                line += memchr::memchr_iter(b'\n', &buffer[..read]).count() as u64;
                at += read as u64;
            }
            found.push(line);
        }
        Ok(found)
    }

    /// The log's sections, from its markers (an unclosed one runs to the end).
    pub fn sections(&self) -> Vec<Section> {
        let end = self.lines + 1;
        let mut sections = Vec::new();
        let mut open: Vec<(String, Option<String>, u64)> = Vec::new();
        let mut heading: Option<(String, u64)> = None;
        for (line, found) in &self.markers {
            match found {
                Marker::Open { title, key } => open.push((title.clone(), key.clone(), *line)),
                Marker::Close { key } => {
                    let at = match key {
                        Some(key) => open.iter().rposition(|(_, k, _)| k.as_ref() == Some(key)),
                        None => open.len().checked_sub(1),
                    };
                    if let Some(at) = at {
                        let (title, _, start) = open.remove(at);
                        sections.push(Section {
                            title,
                            start,
                            end: line + 1,
                        });
                    }
                }
                Marker::Heading { title } => {
                    if let Some((title, start)) = heading.take() {
                        sections.push(Section {
                            title,
                            start,
                            end: *line,
                        });
                    }
                    heading = Some((title.clone(), *line));
                }
            }
        }
        for (title, _, start) in open.into_iter().chain(heading.map(|(t, s)| (t, None, s))) {
            sections.push(Section { title, start, end });
        }
        sections.sort_by_key(|section| section.start);
        sections
    }

    /// Lines whose text contains `needle` (ASCII case ignored), at most `limit`.
    pub fn search(
        &self,
        path: &Path,
        needle: &str,
        limit: usize,
    ) -> std::io::Result<(Vec<u64>, bool)> {
        let needle = needle.to_ascii_lowercase();
        let finder = memchr::memmem::Finder::new(needle.as_bytes());
        let file = match File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Vec::new(), false))
            }
            Err(error) => return Err(error),
        };
        let mut reader = std::io::BufReader::with_capacity(1 << 20, file.take(self.scanned));
        let mut found = Vec::new();
        let mut line = Vec::new();
        let mut number = 0u64;
        loop {
            line.clear();
            if read_line(&mut reader, &mut line)? == 0 {
                return Ok((found, false));
            }
            line.make_ascii_lowercase();
            if finder.find(&line).is_some() {
                if found.len() == limit {
                    return Ok((found, true));
                }
                found.push(number);
            }
            number += 1;
        }
    }
}

/// Reads one line (through its `\n`) into `into`, keeping at most `MAX_LINE`
/// bytes of it (and its `\n`): a line of any length costs `MAX_LINE` of memory.
/// Returns the bytes the line took in the file.
fn read_line(reader: &mut impl std::io::BufRead, into: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut read = 0;
    loop {
        let buffer = match reader.fill_buf() {
            Ok(buffer) => buffer,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        if buffer.is_empty() {
            return Ok(read);
        }
        let (taken, done) = match memchr::memchr(b'\n', buffer) {
            Some(at) => (at + 1, true),
            None => (buffer.len(), false),
        };
        let room = MAX_LINE.saturating_sub(into.len());
        into.extend_from_slice(&buffer[..taken.min(room)]);
        if done && taken > room {
            into.push(b'\n');
        }
        reader.consume(taken);
        read += taken;
        if done {
            return Ok(read);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index_of(dir: &Path, text: &[u8]) -> LineIndex {
        let path = dir.join("log");
        std::fs::write(&path, text).unwrap();
        let mut index = LineIndex::default();
        index.catch_up(&path).unwrap();
        index
    }

    #[test]
    fn a_window_of_long_lines_holds_a_bounded_number_of_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        // 40 lines of 200 KiB: each shown cut at MAX_LINE.
        let long = "x".repeat(200 << 10);
        let text: String = (0..40).map(|n| format!("{n:02}{long}\n")).collect();
        let index = index_of(dir.path(), text.as_bytes());
        let head = index.window(&path, 0, 2000, false).unwrap();
        let per_line = MAX_LINE;
        assert_eq!(head.lines.len(), MAX_WINDOW_BYTES / per_line);
        assert!(head.lines.iter().all(|line| line.len() == MAX_LINE));
        assert_eq!((head.first, &head.lines[0][..2]), (0, "00"));
        let tail = index.window(&path, 0, 40, true).unwrap();
        assert_eq!(tail.lines.len(), MAX_WINDOW_BYTES / per_line);
        assert_eq!(tail.first, 40 - tail.lines.len() as u64);
        assert_eq!(&tail.lines.last().unwrap()[..2], "39");
        // A line longer than the whole budget still comes, alone.
        let one = index.window(&path, 7, 1, false).unwrap();
        assert_eq!((one.first, one.lines.len()), (7, 1));
    }

    #[test]
    fn windows_of_lines_come_from_anywhere_in_a_growing_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let text: String = (0..5000).map(|n| format!("line {n}\n")).collect();
        let mut index = index_of(dir.path(), text.as_bytes());
        let window = index.window(&path, 1234, 3, false).unwrap();
        assert_eq!(window.lines, ["line 1234", "line 1235", "line 1236"]);
        assert_eq!((window.total, window.partial), (5000, false));
        // It grows, with a line in progress.
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut file, b"line 5000\nhalf a li").unwrap();
        index.catch_up(&path).unwrap();
        let tail = index.window(&path, 4999, 10, false).unwrap();
        assert_eq!(tail.lines, ["line 4999", "line 5000", "half a li"]);
        assert_eq!((tail.total, tail.partial), (5002, true));
        std::io::Write::write_all(&mut file, b"ne\nnext\n").unwrap();
        index.catch_up(&path).unwrap();
        let tail = index.window(&path, 5001, 10, false).unwrap();
        assert_eq!(tail.lines, ["half a line", "next"]);
        assert_eq!(tail.total, 5003);
        let expected: Vec<u64> = std::iter::once(499).chain(4990..=4999).collect();
        assert_eq!(index.search(&path, "LINE 499", 100).unwrap().0, expected);
    }

    #[test]
    fn sections_from_gitlab_github_and_buildkite_markers() {
        let dir = tempfile::tempdir().unwrap();
        let log = "\x1b[0Ksection_start:1700000000:install[collapsed=true]\r\x1b[0KInstall deps\n\
                   added 1 package\n\
                   \x1b[0Ksection_end:1700000001:install\r\x1b[0K\n\
                   ::group::Compile\n\
                   tsc\n\
                   ::endgroup::\n\
                   --- Test\n\
                   ok\n\
                   +++ Deploy\n\
                   done\n";
        let index = index_of(dir.path(), log.as_bytes());
        let titles: Vec<(String, u64, u64)> = index
            .sections()
            .into_iter()
            .map(|s| (s.title, s.start, s.end))
            .collect();
        assert_eq!(
            titles,
            [
                ("Install deps".to_owned(), 0, 3),
                ("Compile".to_owned(), 3, 6),
                ("Test".to_owned(), 6, 8),
                ("Deploy".to_owned(), 8, 11),
            ]
        );
    }

    proptest::proptest! {
        #[test]
        fn indexing_in_pieces_equals_indexing_whole(
            text in "[a-z\\n]{0,3000}",
            cuts in proptest::collection::vec(0usize..3000, 0..6),
            first in 0u64..800,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("log");
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
            cuts.sort_unstable();
            let mut index = LineIndex::default();
            let mut written = 0;
            for cut in cuts.into_iter().chain([text.len()]) {
                let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
                std::io::Write::write_all(&mut file, &text.as_bytes()[written..cut]).unwrap();
                written = cut;
                index.catch_up(&path).unwrap();
            }
            let whole = index_of(dir.path(), text.as_bytes());
            let a = index.window(&path, first, 50, false).unwrap();
            let b = whole.window(&path, first, 50, false).unwrap();
            proptest::prop_assert_eq!((a.total, a.partial, &a.lines), (b.total, b.partial, &b.lines));
            let expected: Vec<&str> = text.split('\n').collect();
            let expected_total = if text.is_empty() { 0 } else if text.ends_with('\n') { expected.len() - 1 } else { expected.len() };
            proptest::prop_assert_eq!(a.total as usize, expected_total);
        }
    }
}
