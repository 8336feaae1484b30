//! Finds secrets in a directory that will be served publicly (`.medusa/server/public`):
//! credentials by format (`rules`), files that must never be public by their name,
//! symlinks out of the directory, and the job's own secret variables, literally and
//! base64-encoded.
//!
//! Speed comes from reading each file once, in chunks, with one keyword pass
//! (Aho-Corasick) that decides where the few regexes run; files are scanned in
//! parallel. Binary files are skipped by their content. Memory is bounded by the chunk
//! size whatever the file size; chunks overlap so that a secret across a chunk boundary
//! is still found. What it leaves out: decoding archives or compressed files, and
//! following symlinks (a link inside the directory is scanned at its target).

pub mod report;
pub mod rules;

mod text;

use text::inside_base64_run;
pub use text::{fingerprint, looks_binary, redact};

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use aho_corasick::{AhoCorasick, MatchKind};
use globset::{Glob, GlobSet, GlobSetBuilder};
use rayon::prelude::*;
use regex::bytes::Regex;
use serde::Serialize;

pub use rules::Severity;
use rules::{Candidate, RULES};

/// Bytes read per chunk; the memory a file costs however large it is.
const CHUNK: usize = 1 << 20;
/// Bytes before a keyword that a rule may look at; carried from the previous chunk.
const BACK: usize = 64;
/// Bytes of a file's start inspected to tell text from binary.
const SNIFF: usize = 8192;
/// Shorter secret values would match ordinary words in a bundle; they are not searched.
pub const MIN_SCANNED_SECRET_LEN: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Relative to the scanned directory, `/`-separated.
    pub path: String,
    /// 1-based; 0 for findings about a whole file.
    pub line: u64,
    /// 1-based byte column; 0 for findings about a whole file.
    pub column: u64,
    pub rule: String,
    pub severity: Severity,
    /// What was found, for a person.
    pub what: String,
    /// A short prefix of the secret, never the secret.
    pub redacted: String,
    /// Stable across builds (rule and secret, not place): what an allowlist names.
    pub fingerprint: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ScanReport {
    pub findings: Vec<Finding>,
    pub files_scanned: u64,
    pub bytes_scanned: u64,
    /// Files skipped as binary (images, fonts, archives).
    pub binary_files_skipped: u64,
    /// Findings an allowlist matched; counted, not shown.
    pub allowed: u64,
}

/// What to do with findings, and which to accept: the project's `secret_scan`
/// setting, which is also the shape of `kiln-agent scan --config`.
pub type ScanPolicy = kiln_protocol::SecretScanSettings;

/// The keys of a `--config` file; anything else is a typo worth naming.
pub const POLICY_KEYS: &[&str] = &["mode", "allow_paths", "allow_rules", "allow_fingerprints"];

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot read {}: {error}; check that it exists and the agent may read it", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{} is not a directory; scan the folder that will be served (e.g. .medusa/server/public)", path.display())]
    NotADirectory { path: PathBuf },
    #[error("allow_paths glob {glob:?} is invalid: {source}")]
    BadGlob {
        glob: String,
        source: globset::Error,
    },
    #[error("unknown rule {rule:?} in allow_rules; known rules: {known}")]
    UnknownRule { rule: String, known: String },
}

/// A secret variable of the job, searched for by value.
#[derive(Clone)]
pub struct NamedSecret {
    pub name: String,
    pub value: String,
}

pub struct Scanner {
    keywords: AhoCorasick,
    /// Per keyword: the rules to run where it is found.
    owners: Vec<Vec<usize>>,
    regexes: Vec<Regex>,
    /// The job's secrets: a matcher of their forms' fragments, and the forms.
    secrets: Option<(FragmentMatcher, Vec<SecretForm>)>,
    secret_names: Vec<String>,
    /// Bytes a chunk shares with the next: the longest thing a rule or secret spans.
    overlap: usize,
    /// Bytes read per chunk (`CHUNK`; tests make it tiny).
    chunk: usize,
    allow_paths: GlobSet,
    allow_rules: HashSet<String>,
    allow_fingerprints: HashSet<String>,
}

impl Scanner {
    pub fn new(secrets: &[NamedSecret], policy: &ScanPolicy) -> Result<Scanner, ScanError> {
        let mut patterns: Vec<&str> = Vec::new();
        for rule in RULES {
            for keyword in rule.keywords {
                if !patterns.contains(keyword) {
                    patterns.push(keyword);
                }
            }
        }
        // Leftmost-first search reports one keyword where several overlap (`_password`
        // hides `password`), so a keyword also runs the rules of every keyword in it.
        let owners = patterns
            .iter()
            .map(|pattern| {
                RULES
                    .iter()
                    .enumerate()
                    .filter(|(_, rule)| rule.keywords.iter().any(|k| pattern.contains(k)))
                    .map(|(index, _)| index)
                    .collect()
            })
            .collect();
        let keywords = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostFirst)
            .build(&patterns)
            .expect("literal keywords always build");
        let regexes = RULES
            .iter()
            .map(|rule| {
                Regex::new(&format!("(?-u){}", rule.pattern)).expect("rule regexes are tested")
            })
            .collect();

        let mut fragments = Vec::new();
        let mut secret_forms = Vec::new();
        for (index, secret) in secrets.iter().enumerate() {
            if secret.value.len() < MIN_SCANNED_SECRET_LEN {
                continue;
            }
            for form in crate::mask::secret_forms(&secret.value) {
                let skip = rare_start(&form);
                fragments.push(form[skip..].to_vec());
                secret_forms.push(SecretForm {
                    variable: index,
                    form,
                    skip,
                });
            }
        }
        let longest_secret = secret_forms.iter().map(|f| f.form.len()).max().unwrap_or(0);
        let secrets_matcher =
            (!fragments.is_empty()).then(|| (FragmentMatcher::new(&fragments), secret_forms));
        let longest_rule = RULES
            .iter()
            .map(|rule| rule.look_back + rule.look_ahead + 32)
            .max()
            .unwrap_or(0);

        let mut globs = GlobSetBuilder::new();
        for glob in &policy.allow_paths {
            globs.add(Glob::new(glob).map_err(|source| ScanError::BadGlob {
                glob: glob.clone(),
                source,
            })?);
        }
        for rule in &policy.allow_rules {
            if !RULES.iter().any(|known| known.id == rule) && !OTHER_RULES.contains(&rule.as_str())
            {
                let known: Vec<&str> = RULES
                    .iter()
                    .map(|r| r.id)
                    .chain(OTHER_RULES.iter().copied())
                    .collect();
                return Err(ScanError::UnknownRule {
                    rule: rule.clone(),
                    known: known.join(", "),
                });
            }
        }
        Ok(Scanner {
            keywords,
            owners,
            regexes,
            secrets: secrets_matcher,
            secret_names: secrets.iter().map(|s| s.name.clone()).collect(),
            overlap: longest_rule.max(longest_secret + BACK).next_power_of_two(),
            chunk: CHUNK,
            allow_paths: globs.build().map_err(|source| ScanError::BadGlob {
                glob: policy.allow_paths.join(", "),
                source,
            })?,
            allow_rules: policy.allow_rules.iter().cloned().collect(),
            allow_fingerprints: policy.allow_fingerprints.iter().cloned().collect(),
        })
    }

    /// Scans every file under `root`, in parallel; findings sorted by path and place.
    pub fn scan_dir(&self, root: &Path) -> Result<ScanReport, ScanError> {
        let meta = std::fs::metadata(root).map_err(|error| ScanError::Io {
            path: root.to_owned(),
            error,
        })?;
        if !meta.is_dir() {
            return Err(ScanError::NotADirectory {
                path: root.to_owned(),
            });
        }
        let root = root.canonicalize().map_err(|error| ScanError::Io {
            path: root.to_owned(),
            error,
        })?;
        let mut files = Vec::new();
        let mut findings = Vec::new();
        let mut walker = walkdir::WalkDir::new(&root).follow_links(false).into_iter();
        while let Some(entry) = walker.next() {
            let entry = entry.map_err(|error| ScanError::Io {
                path: error.path().unwrap_or(&root).to_owned(),
                error: error.into(),
            })?;
            let relative = relative_path(&root, entry.path());
            let file_type = entry.file_type();
            if file_type.is_dir() {
                if entry.file_name() == ".git" {
                    findings.push(file_finding(
                        &relative,
                        "git-directory",
                        Severity::High,
                        "git repository (history, remotes, maybe credentials)",
                    ));
                    walker.skip_current_dir();
                }
                continue;
            }
            if file_type.is_symlink() {
                if !symlink_stays_inside(&root, entry.path()) {
                    findings.push(file_finding(
                        &relative,
                        "symlink-outside",
                        Severity::Critical,
                        "symlink pointing outside the public directory",
                    ));
                }
                continue;
            }
            if !file_type.is_file() {
                continue;
            }
            if let Some((rule, what)) = forbidden_name(entry.file_name().to_string_lossy().as_ref())
            {
                findings.push(file_finding(&relative, rule, Severity::High, what));
            }
            files.push((entry.into_path(), relative));
        }

        let per_file: Vec<Result<FileScan, ScanError>> = files
            .par_iter()
            .map_init(
                || vec![0u8; self.chunk + self.overlap + BACK],
                |buffer, (path, relative)| self.scan_file(path, relative, buffer),
            )
            .collect();
        let mut report = ScanReport::default();
        for scanned in per_file {
            let scanned = scanned?;
            if scanned.binary {
                report.binary_files_skipped += 1;
            } else {
                report.files_scanned += 1;
            }
            report.bytes_scanned += scanned.bytes;
            findings.extend(scanned.findings);
        }
        findings.sort_by(|a, b| {
            (&a.path, a.line, a.column, &a.rule).cmp(&(&b.path, b.line, b.column, &b.rule))
        });
        for finding in findings {
            if self.is_allowed(&finding) {
                report.allowed += 1;
            } else {
                report.findings.push(finding);
            }
        }
        Ok(report)
    }

    fn is_allowed(&self, finding: &Finding) -> bool {
        self.allow_rules.contains(&finding.rule)
            || self.allow_fingerprints.contains(&finding.fingerprint)
            || self.allow_paths.is_match(&finding.path)
    }

    /// Scans one file chunk by chunk. `buffer` is the worker's, reused across files.
    fn scan_file(
        &self,
        path: &Path,
        relative: &str,
        buffer: &mut [u8],
    ) -> Result<FileScan, ScanError> {
        let io_error = |error| ScanError::Io {
            path: path.to_owned(),
            error,
        };
        let mut file = File::open(path).map_err(io_error)?;
        let mut scan = FileScan::default();
        let mut seen: HashSet<(usize, u64)> = HashSet::new();
        // `buffer[..carried]` holds the end of the previous chunk; `base` is the file
        // offset of `buffer[0]`; hits before `commit_from` were handled already.
        let mut carried = 0usize;
        let mut base = 0u64;
        let mut commit_from = 0usize;
        let mut lines = LineCounter::default();
        let mut first = true;
        loop {
            let mut filled = carried;
            let mut eof = false;
            while filled < buffer.len() {
                match file.read(&mut buffer[filled..]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => filled += n,
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(error) => return Err(io_error(error)),
                }
            }
            let hay = &buffer[..filled];
            if first {
                first = false;
                if looks_binary(&hay[..hay.len().min(SNIFF)]) {
                    scan.binary = true;
                    scan.bytes = file.metadata().map_or(filled as u64, |m| m.len());
                    return Ok(scan);
                }
            }
            scan.bytes += (filled - carried) as u64;
            let commit_to = if eof { filled } else { filled - self.overlap };
            let mut hits = Vec::new();
            self.find_in(hay, commit_from, commit_to, &mut hits);
            hits.sort_by_key(|hit| hit.start);
            drop_generic_inside_specific(&mut hits);
            for hit in hits {
                let absolute = base + hit.start as u64;
                if !seen.insert((hit.rule_key, absolute)) {
                    continue;
                }
                let (line, column) = lines.position(hay, hit.start);
                let rule_id = hit.rule_id;
                scan.findings.push(Finding {
                    path: relative.to_owned(),
                    line,
                    column,
                    rule: rule_id.clone(),
                    severity: hit.severity,
                    what: hit.what,
                    redacted: hit.redacted,
                    fingerprint: fingerprint(&rule_id, &hit.secret),
                });
            }
            if eof {
                return Ok(scan);
            }
            // Carry the overlap plus what rules look back at into the next chunk.
            let keep_from = commit_to - BACK.min(commit_to);
            lines.advance(hay, keep_from);
            buffer.copy_within(keep_from..filled, 0);
            carried = filled - keep_from;
            base += keep_from as u64;
            commit_from = commit_to - keep_from;
        }
    }

    /// Collects hits whose keyword or secret starts in `hay[from..to]`.
    fn find_in(&self, hay: &[u8], from: usize, to: usize, hits: &mut Vec<Hit>) {
        for found in self.keywords.find_iter(&hay[from..]) {
            let start = from + found.start();
            if start >= to {
                break;
            }
            let end = from + found.end();
            for &index in &self.owners[found.pattern().as_usize()] {
                self.verify(index, hay, start, end, hits);
            }
        }
        if let Some((matcher, forms)) = &self.secrets {
            for (pattern, found_start) in matcher.find_iter(&hay[from..]) {
                let fragment_start = from + found_start;
                if fragment_start >= to {
                    break;
                }
                let form = &forms[pattern];
                let Some(start) = fragment_start.checked_sub(form.skip) else {
                    continue;
                };
                if !hay[start..].starts_with(&form.form) {
                    continue;
                }
                let variable = &self.secret_names[form.variable];
                let secret = &hay[start..start + form.form.len()];
                hits.push(Hit {
                    start,
                    end: start + form.form.len(),
                    rule_key: usize::MAX - form.variable,
                    rule_id: JOB_SECRET_RULE.to_owned(),
                    severity: Severity::Critical,
                    what: format!("value of the job's secret variable {variable}"),
                    redacted: redact(secret, 0),
                    secret: secret.to_vec(),
                });
            }
        }
    }

    /// Runs rule `index` around a keyword at `hay[start..end]`.
    fn verify(&self, index: usize, hay: &[u8], start: usize, end: usize, hits: &mut Vec<Hit>) {
        let rule = &RULES[index];
        let window_start = start.saturating_sub(rule.look_back);
        let window_end = (end + rule.look_ahead).min(hay.len());
        let window = &hay[window_start..window_end];
        for captures in self.regexes[index].captures_iter(window) {
            let whole = captures.get(0).expect("group 0 always matches");
            // Only the match over this keyword; others have keywords of their own.
            if window_start + whole.start() >= end || window_start + whole.end() <= start {
                continue;
            }
            let Some(secret) = captures.get(rule.secret_group) else {
                continue;
            };
            let candidate = Candidate {
                whole: whole.as_bytes(),
                secret: secret.as_bytes(),
            };
            let after = &window[whole.end()..];
            if !(rule.check)(&candidate, after) {
                continue;
            }
            let absolute_start = window_start + whole.start();
            if rule.token && inside_base64_run(hay, absolute_start, window_start + whole.end()) {
                continue;
            }
            let (secret, redacted) = if rule.shown_prefix == usize::MAX {
                // A header (`-----BEGIN RSA PRIVATE KEY-----`) names the format and may
                // be shown; what follows it is the secret.
                let header = String::from_utf8_lossy(whole.as_bytes());
                (after[..after.len().min(96)].to_vec(), format!("{header}…"))
            } else {
                (
                    secret.as_bytes().to_vec(),
                    redact(secret.as_bytes(), rule.shown_prefix),
                )
            };
            hits.push(Hit {
                start: absolute_start,
                end: window_start + whole.end(),
                rule_key: index,
                rule_id: rule.id.to_owned(),
                severity: rule.severity,
                what: rule.what.to_owned(),
                secret,
                redacted,
            });
        }
    }
}

/// Finds secret fragments with the SIMD packed searcher (Teddy) when the CPU has it:
/// left to itself, Aho-Corasick may pick a one-rare-byte prefilter, and that byte is
/// seldom rare in a minified bundle.
enum FragmentMatcher {
    Packed(aho_corasick::packed::Searcher),
    Automaton(AhoCorasick),
}

impl FragmentMatcher {
    fn new(fragments: &[Vec<u8>]) -> FragmentMatcher {
        let packed = aho_corasick::packed::Config::new()
            .match_kind(aho_corasick::packed::MatchKind::LeftmostLongest)
            .builder()
            .extend(fragments)
            .build();
        match packed {
            Some(searcher) => FragmentMatcher::Packed(searcher),
            None => FragmentMatcher::Automaton(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(fragments)
                    .expect("literal secrets always build"),
            ),
        }
    }

    /// (pattern index, start) of each match, left to right.
    fn find_iter<'a>(&'a self, hay: &'a [u8]) -> Box<dyn Iterator<Item = (usize, usize)> + 'a> {
        match self {
            FragmentMatcher::Packed(searcher) => Box::new(
                searcher
                    .find_iter(hay)
                    .map(|m| (m.pattern().as_usize(), m.start())),
            ),
            FragmentMatcher::Automaton(matcher) => Box::new(
                matcher
                    .find_iter(hay)
                    .map(|m| (m.pattern().as_usize(), m.start())),
            ),
        }
    }
}

/// A form of a job secret (itself or a base64 alignment), found by a fragment of it
/// that starts `skip` bytes in.
struct SecretForm {
    variable: usize,
    form: Vec<u8>,
    skip: usize,
}

/// Where a secret form's search fragment should start: the SIMD keyword search
/// checks a fragment's first three bytes, and a common trigram there (`and` opens
/// the base64 of `jwt-…`) would stop it at every English word in a bundle. Picks,
/// among the first few offsets, the trigram with the most capitals and digits.
fn rare_start(form: &[u8]) -> usize {
    let weight = |byte: &u8| match byte {
        b'A'..=b'Z' | b'0'..=b'9' => 3,
        b'a'..=b'z' | b' ' | b';' | b',' | b'.' | b'(' | b')' | b'=' | b'"' | b'\'' => 0,
        _ => 2,
    };
    let last = form.len().saturating_sub(MIN_SCANNED_SECRET_LEN).min(8);
    (0..=last)
        .max_by_key(|&k| {
            let score: u32 = form[k..(k + 3).min(form.len())].iter().map(weight).sum();
            (score, std::cmp::Reverse(k))
        })
        .unwrap_or(0)
}

pub const JOB_SECRET_RULE: &str = "job-secret";
/// Rules beside the format rules: the job's secrets, and files that must not be public.
pub const OTHER_RULES: &[&str] = &[
    JOB_SECRET_RULE,
    "env-file",
    "ssh-private-key-file",
    "git-directory",
    "symlink-outside",
];

struct Hit {
    start: usize,
    end: usize,
    /// Which rule or secret, for de-duplication across overlapping chunks.
    rule_key: usize,
    rule_id: String,
    severity: Severity,
    what: String,
    secret: Vec<u8>,
    redacted: String,
}

/// A generic `apiKey: "…"` around a value a specific rule already named (an AWS key)
/// would report the same secret twice; the specific finding says more.
fn drop_generic_inside_specific(hits: &mut Vec<Hit>) {
    let specific: Vec<(usize, usize)> = hits
        .iter()
        .filter(|hit| hit.rule_id != GENERIC_RULE)
        .map(|hit| (hit.start, hit.end))
        .collect();
    hits.retain(|hit| {
        hit.rule_id != GENERIC_RULE
            || !specific
                .iter()
                .any(|(start, end)| *start < hit.end && hit.start < *end)
    });
}

const GENERIC_RULE: &str = "generic-secret-assignment";

#[derive(Default)]
struct FileScan {
    findings: Vec<Finding>,
    bytes: u64,
    binary: bool,
}

/// Line and column of offsets in a file read in chunks; offsets asked must grow.
#[derive(Default)]
struct LineCounter {
    /// Newlines in the file before the current chunk.
    lines_before: u64,
    /// File offset just past the last newline before the current chunk.
    line_start_before: Option<u64>,
    base: u64,
    /// Within the current chunk: position counted up to, and newlines before it.
    cursor: usize,
    lines_to_cursor: u64,
    last_newline: Option<usize>,
}

impl LineCounter {
    fn position(&mut self, hay: &[u8], offset: usize) -> (u64, u64) {
        if offset > self.cursor {
            let part = &hay[self.cursor..offset];
            self.lines_to_cursor += memchr::memchr_iter(b'\n', part).count() as u64;
            if let Some(last) = memchr::memrchr(b'\n', part) {
                self.last_newline = Some(self.cursor + last);
            }
            self.cursor = offset;
        }
        let line = self.lines_before + self.lines_to_cursor + 1;
        let line_start = match self.last_newline {
            Some(newline) => self.base + newline as u64 + 1,
            None => self.line_start_before.unwrap_or(0),
        };
        (line, self.base + offset as u64 - line_start + 1)
    }

    /// Moves to the next chunk, which starts at `hay[keep_from]`.
    fn advance(&mut self, hay: &[u8], keep_from: usize) {
        let counted = &hay[..keep_from];
        let newlines = memchr::memchr_iter(b'\n', counted).count() as u64;
        let last = memchr::memrchr(b'\n', counted);
        self.lines_before += newlines;
        if let Some(last) = last {
            self.line_start_before = Some(self.base + last as u64 + 1);
        }
        self.base += keep_from as u64;
        self.cursor = 0;
        self.lines_to_cursor = 0;
        self.last_newline = None;
    }
}

fn file_finding(path: &str, rule: &str, severity: Severity, what: &str) -> Finding {
    Finding {
        path: path.to_owned(),
        line: 0,
        column: 0,
        rule: rule.to_owned(),
        severity,
        what: what.to_owned(),
        redacted: String::new(),
        fingerprint: fingerprint(rule, path.as_bytes()),
    }
}

/// Names of files that must never be served, whatever they hold.
fn forbidden_name(name: &str) -> Option<(&'static str, &'static str)> {
    let lower = name.to_ascii_lowercase();
    if lower == ".env" || lower.starts_with(".env.") {
        // Templates that list variable names are meant to be shared.
        let template = [".example", ".sample", ".template", ".dist", ".defaults"]
            .iter()
            .any(|suffix| lower.ends_with(suffix));
        if !template {
            return Some((
                "env-file",
                "environment file (.env), usually full of secrets",
            ));
        }
    }
    if matches!(
        lower.as_str(),
        "id_rsa" | "id_dsa" | "id_ecdsa" | "id_ed25519" | "id_ecdsa_sk" | "id_ed25519_sk"
    ) {
        return Some(("ssh-private-key-file", "SSH private key file"));
    }
    None
}

fn relative_path(root: &Path, path: &Path) -> String {
    let relative = path.strip_prefix(root).unwrap_or(path);
    relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Whether a symlink's target, resolved, is inside `root` (a dangling link is judged
/// by where it points).
fn symlink_stays_inside(root: &Path, link: &Path) -> bool {
    if let Ok(target) = link.canonicalize() {
        return target.starts_with(root);
    }
    let Ok(target) = std::fs::read_link(link) else {
        return false;
    };
    let joined = link.parent().unwrap_or(root).join(target);
    let mut normal = PathBuf::new();
    for component in joined.components() {
        match component {
            std::path::Component::ParentDir => {
                normal.pop();
            }
            std::path::Component::CurDir => {}
            other => normal.push(other),
        }
    }
    normal.starts_with(root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tree;
    use proptest::prelude::*;

    fn scanner() -> Scanner {
        Scanner::new(&[], &ScanPolicy::default()).unwrap()
    }

    fn rules_found(text: &str) -> Vec<String> {
        let dir = tree(&[("app.js", text)]);
        let report = scanner().scan_dir(dir.path()).unwrap();
        report.findings.into_iter().map(|f| f.rule).collect()
    }

    // Built from parts so that this file holds no literal credential.
    fn key(prefix: &str, body: &str) -> String {
        format!("{prefix}{body}")
    }

    const BODY_RSA: &str = "MIIEowIBAAKCAQEA1c7+9z5Pad7OejecsQ0bu3aozN3tihPmljnnudb9G3HecDQ2Zx0f\\nKJx3nQ8p2mVw1tYb7Rk4sLd9eFgHiJkLmNoPqRsTuVwXyZaBcDeFgHiJkLmNoPq";

    #[test]
    fn each_rule_finds_its_format() {
        let cases: Vec<(&str, String)> = vec![
            ("private-key", format!("const k=\"-----BEGIN RSA PRIVATE KEY-----\\n{BODY_RSA}\\n-----END RSA PRIVATE KEY-----\"")),
            ("private-key", format!("-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n", BODY_RSA.replace("\\n", "\n"))),
            ("private-key", format!("{{\"k\":\"-----BEGIN PRIVATE KEY-----\\\\n{BODY_RSA}\"}}")),
            ("aws-access-key-id", key("x=\"AKIA", "Z7Q3M4XWJKPLR2TD\"")),
            ("aws-secret-access-key", key("aws_secret_access_key = ", "Zx9/Qw3+Er5TyU7iOp1AsDfGhJkL2ZxCvBnM4qWe")),
            ("stripe-secret-key", key("sk_live_", "51NzQ3bKc8Jv2LmXpT4rWq9YdE6uA0sHg")),
            ("stripe-secret-key", key("rk_test_", "51NzQ3bKc8Jv2LmXpT4rWq9YdE6uA0sHg")),
            ("stripe-webhook-secret", key("whsec_", "Q8mZ2kP4vX7nR1tY6wB3cL9dF5hJ0sA2")),
            ("medusa-secret-api-key", key("sk_", &"a1b2c3d4".repeat(8))),
            (
                "basic-auth-header",
                format!(
                    "headers:{{Authorization:\"Basic {}\"}}",
                    base64::Engine::encode(
                        &base64::engine::general_purpose::STANDARD,
                        format!("sk_{}:", "a1b2c3d4".repeat(8))
                    )
                ),
            ),
            (
                "generic-secret-assignment",
                "smtp:{host:\"smtp.mailgun.org\",auth:{user:\"postmaster@shop.io\",pass:\"Xq7Lm2Pz9Rt4Vw8Y\"}}".to_owned(),
            ),
            ("github-token", key("ghp_", "Q8mZ2kP4vX7nR1tY6wB3cL9dF5hJ0sA2gE4u")),
            ("github-token", key("github_pat_", &"A1b2C3d4E5".repeat(8))),
            ("slack-token", key("xoxb-", "12345678901-1234567890123-Q8mZ2kP4vX7nR1tY6wB3cL9d")),
            ("slack-webhook-url", key("https://hooks.slack.com/services/", "T0ABCDEFG/B0ABCDEFGH/Q8mZ2kP4vX7nR1tY6wB3cL9d")),
            ("google-api-key", key("AIza", "SyQ8mZ2kP4vX7nR1tY6wB3cL9dF5hJ0sA2g")),
            ("google-oauth-client-secret", key("GOCSPX-", "Q8mZ2kP4vX7nR1tY6wB3cL9dF5hJ")),
            ("gcp-service-account", "{\"type\": \"service_account\", \"private_key_id\": \"1\", \"private_key\": \"x\"}".to_owned()),
            ("sendgrid-api-key", key("SG.", "Q8mZ2kP4vX7nR1tY6wB3cL.Q8mZ2kP4vX7nR1tY6wB3cL9dF5hJ0sA2gE4uQ8mZ2kP")),
            ("twilio-api-key", key("SK", &"0123456789abcdef".repeat(2))),
            ("openai-api-key", key("sk-proj-", &"Q8mZ2kP4vX7nR1tY6wB3".repeat(3))),
            ("npm-token", key("npm_", "Q8mZ2kP4vX7nR1tY6wB3cL9dF5hJ0sA2gE4u")),
            ("npmrc-auth", key("//registry.npmjs.org/:_authToken=", "Q8mZ2kP4-vX7nR1tY6")),
            ("jwt", key("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.", "eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U")),
            ("url-password", key("postgres://medusa:", "s3cr3tPassw0rd@db.internal:5432/medusa")),
            ("url-password", key("https://deploy:", "Q8mZ2kP4vX7n@api.myshop.io")),
            ("basic-auth-header", key("Authorization: Basic ", "YWRtaW46UThtWjJrUDR2WDduUjF0")),
            ("generic-secret-assignment", key("config={client_secret:\"", "aB3dE5fG7hJ9kL1mN2pQ4rS6tU8vW0xY\"}")),
            ("generic-secret-assignment", key("PASSWORD=\"", "Zx9-Qw3+Er5TyU7i\"")),
            (
                "generic-secret-assignment",
                "{\"smtp\":{\"host\":\"smtp.mailgun.org\",\"port\":587,\"auth\":{\"user\":\"postmaster@shop.io\",\"pass\":\"Xq7Lm2Pz9Rt4Vw8Y\"}}}".to_owned(),
            ),
            (
                "generic-secret-assignment",
                "{\n  \"smtp\": {\n    \"user\": \"orders@shop.io\",\n    \"pass\": \"k9#Tq2!vLm7$Wz4x\"\n  }\n}".to_owned(),
            ),
            (
                "generic-secret-assignment",
                "JSON.parse('{\\\"smtp\\\":{\\\"pass\\\":\\\"Xq7Lm2Pz9Rt4Vw8Y\\\"}}')".to_owned(),
            ),
            (
                "generic-secret-assignment",
                "{\"smtp\":{\"pass\":\"b7e1c2d94f3a6e8b0c5d7f9a1e3b5c7d-8f2a4c6e-1b3d5f7a\"}}".to_owned(),
            ),
            (
                "generic-secret-assignment",
                "{\"smtp\":{\"user\":\"orders@shop.io\",\"pass\":\"qwzx mnbv lkjh poiu\"}}".to_owned(),
            ),
            ("generic-secret-assignment", key("{\"smtp_pass\":\"", "Xq7Lm2Pz9Rt4Vw8Y\"}")),
            ("generic-secret-assignment", key("SMTP_PASS=\"", "Xq7Lm2Pz9Rt4Vw8Y\"")),
            ("generic-secret-assignment", key("{smtpPass:\"", "Xq7Lm2Pz9Rt4Vw8Y\"}")),
        ];
        for (rule, text) in cases {
            let found = rules_found(&text);
            assert_eq!(found, vec![rule.to_owned()], "in {text:?}");
        }
    }

    #[test]
    fn a_twilio_secret_is_found_beside_its_sid_without_a_keyword() {
        let minified = "new t.Twilio(\"SK0123456789abcdef0123456789abcdef\",\"Xq7Lm2Pz9Rt4Vw8Yb3Nc6Hd1Jk5Gf0Sa\")";
        assert_eq!(
            rules_found(minified),
            ["twilio-api-key", "twilio-api-secret"]
        );
    }

    #[test]
    fn decoys_are_not_flagged() {
        let decoys = [
            key("Medusa({publishableKey:\"pk_", &"a1b2c3d4".repeat(8)),
            key("loadStripe(\"pk_live_", "51NzQ3bKc8Jv2LmXpT4rWq9YdE6uA0sHg\")"),
            "integrity=\"sha384-oqVuAfXRKap7fdgcCY5uykM6+R9GqQ8K/uxy9rx7HNQlGYl1kPzQho1wx4JwY8wC\"".to_owned(),
            "{id:\"prod_01HZX3Q8MZ2KP4VX7NR1TY6WB3\",u:\"3f2b8c1e-9a4d-4e7f-b6c5-1d2e3f4a5b6c\"}".to_owned(),
            "AKIAIOSFODNN7EXAMPLE wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_owned(),
            "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_owned(),
            "{\"apiKey\":\"your-secret-here\",\"password\":\"xxxxxxxxxxxxxxxx\",\"token\":\"<redacted>\",\"secret\":\"${STRIPE_API_KEY}\"}".to_owned(),
            format!("-----BEGIN PUBLIC KEY-----\\n{BODY_RSA}\\n-----END PUBLIC KEY-----"),
            format!("-----BEGIN CERTIFICATE-----\\n{BODY_RSA}\\n-----END CERTIFICATE-----"),
            "-----BEGIN PRIVATE KEY-----\\n...\\n-----END PRIVATE KEY-----".to_owned(),
            "fetch(\"https://api.shop.example/store/products?limit=20\");\"postgres://localhost/medusa\"".to_owned(),
            "postgres://user:password@localhost:5432/medusa https://user:${PASSWORD}@host".to_owned(),
            "jwtSecret:process.env.JWT_SECRET||\"supersecret\"".to_owned(),
            "{\"password\":\"Password\",\"passwordHint\":\"At least 8 characters\"}".to_owned(),
            "stripe(\"sk_test_4eC39HqLyjWDarjtT1zdp7dc\")".to_owned(),
            format!(".a{{background:url(data:image/png;base64,iVBORw0KGgo{}AIzaSyQ8mZ2kP4vX7nR1tY6wB3cL9dF5hJ0sA2g{})}}", "A".repeat(40), "B".repeat(40)),
            "token:\"3f2b8c1e-9a4d-4e7f-b6c5-1d2e3f4a5b6c\",secretKey:\"admin.settings.secret\"".to_owned(),
            "Basic information about your store".to_owned(),
            // The Medusa admin's own translations (ja, zh-CN), as Vite inlines them.
            "publishableApiKey: \"公開可能なAPIキー\", secretApiKey: \"秘密のAPIキー\"".to_owned(),
            "secret: \"秘密API密钥\", createSecretHeader: \"创建秘密API密钥\"".to_owned(),
            "token:\"Токен123доступа\",password:\"Contraseña123Segura\"".to_owned(),
            // npm's own docs and tools, and a URL test fixture.
            "//somewhere-else.com/myorg/:_authToken=MYTOKEN1".to_owned(),
            "const AuthTokenPattern = /_authToken=([^$].*)/g;".to_owned(),
            "\"uri://foo:bar@example.com:1/path?query#fragment\"".to_owned(),
            "\"https://deploy:Q8mZ2kP4vX7n@api.shop.example/v1\"".to_owned(),
            // Publishable keys are public by design.
            format!("headers:{{\"x-publishable-api-key\":\"pk_{}\"}}", "a1b2c3d4".repeat(8)),
            // jwt.io's sample token, and local database defaults in help text.
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c".to_owned(),
            "DATABASE_URL=postgres://postgres:postgres@localhost/medusa-store \"postgres://medusa:Zq8xK2mP9vL4@127.0.0.1:5432/medusa\"".to_owned(),
            "{pass:!0,bypass:\"aB3dE5gH7jK9mN1p\",passive:true}".to_owned(),
        ];
        for text in decoys {
            assert_eq!(rules_found(&text), Vec::<String>::new(), "in {text:?}");
        }
    }

    #[test]
    fn files_by_name_links_out_and_git_dirs_are_findings() {
        let dir = tree(&[
            (".env", "A=1\n"),
            (".env.example", "A=\n"),
            ("keys/id_ed25519", "not a key\n"),
            (".git/config", "[core]\n"),
            ("ok.txt", "fine\n"),
        ]);
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("leak")).unwrap();
        std::os::unix::fs::symlink("ok.txt", dir.path().join("inside")).unwrap();
        let report = scanner().scan_dir(dir.path()).unwrap();
        let found: Vec<(String, String)> = report
            .findings
            .iter()
            .map(|f| (f.path.clone(), f.rule.clone()))
            .collect();
        assert_eq!(
            found,
            [
                (".env", "env-file"),
                (".git", "git-directory"),
                ("keys/id_ed25519", "ssh-private-key-file"),
                ("leak", "symlink-outside"),
            ]
            .map(|(p, r)| (p.to_owned(), r.to_owned()))
        );
        assert_eq!(report.files_scanned, 4, ".git is not descended into");
    }

    #[test]
    fn binary_files_are_skipped_by_content_not_name() {
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend_from_slice(key("AKIA", "Z7Q3M4XWJKPLR2TD").as_bytes());
        let dir = tree(&[]);
        std::fs::write(dir.path().join("logo.png"), &png).unwrap();
        std::fs::write(
            dir.path().join("fake.png"),
            key("ghp_", "Q8mZ2kP4vX7nR1tY6wB3cL9dF5hJ0sA2gE4u"),
        )
        .unwrap();
        let report = scanner().scan_dir(dir.path()).unwrap();
        assert_eq!(report.binary_files_skipped, 1);
        assert_eq!(report.findings.len(), 1);
        assert_eq!(report.findings[0].path, "fake.png");
    }

    #[test]
    fn job_secrets_are_found_literally_and_in_base64_and_never_shown() {
        let secret = "cookie-secret-9f8e7d6c";
        let encoded = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("x{secret}"),
        );
        let dir = tree(&[
            ("a.js", &format!("a=\"{secret}\"")),
            ("b.js", &format!("b=\"{encoded}\"")),
        ]);
        let secrets = [NamedSecret {
            name: "COOKIE_SECRET".into(),
            value: secret.into(),
        }];
        let report = Scanner::new(&secrets, &ScanPolicy::default())
            .unwrap()
            .scan_dir(dir.path())
            .unwrap();
        assert_eq!(report.findings.len(), 2, "{:?}", report.findings);
        for finding in &report.findings {
            assert_eq!(finding.rule, JOB_SECRET_RULE);
            assert!(finding.what.contains("COOKIE_SECRET"));
            assert!(!finding.redacted.contains(&secret[..10]));
        }
    }

    #[test]
    fn lines_and_columns_are_one_based() {
        let text = format!(
            "one\ntwo\n  x={}\n",
            key("ghp_", "Q8mZ2kP4vX7nR1tY6wB3cL9dF5hJ0sA2gE4u")
        );
        let dir = tree(&[("a.js", &text)]);
        let report = scanner().scan_dir(dir.path()).unwrap();
        assert_eq!((report.findings[0].line, report.findings[0].column), (3, 5));
    }

    #[test]
    fn redaction_keeps_a_short_prefix_only() {
        let secret = key("sk_live_", "51NzQ3bKc8Jv2LmXpT4rWq9YdE6uA0sHg");
        assert_eq!(redact(secret.as_bytes(), 8), "sk_live_51Nz…");
        assert_eq!(redact(b"abcdefgh", 0), "ab…");
        // 21 bytes: 4 may show, which would end inside the second character.
        assert_eq!(redact("秘密のAPIキー".as_bytes(), 0), "秘…");
    }

    #[test]
    fn allowlist_by_rule_path_and_fingerprint() {
        let dir = tree(&[
            ("a.js", &key("ghp_", "Q8mZ2kP4vX7nR1tY6wB3cL9dF5hJ0sA2gE4u")),
            (
                "docs/b.md",
                &key("npm_", "Q8mZ2kP4vX7nR1tY6wB3cL9dF5hJ0sA2gE4u"),
            ),
            ("c.js", &key("AKIA", "Z7Q3M4XWJKPLR2TD")),
        ]);
        let all = scanner().scan_dir(dir.path()).unwrap();
        let github = all
            .findings
            .iter()
            .find(|f| f.rule == "github-token")
            .unwrap();
        let policy = ScanPolicy {
            allow_paths: vec!["docs/**".into()],
            allow_rules: vec!["aws-access-key-id".into()],
            allow_fingerprints: vec![github.fingerprint.clone()],
            ..ScanPolicy::default()
        };
        let report = Scanner::new(&[], &policy)
            .unwrap()
            .scan_dir(dir.path())
            .unwrap();
        assert!(report.findings.is_empty(), "{:?}", report.findings);
        assert_eq!(report.allowed, 3);
    }

    fn findings_with_chunk(
        text: &[u8],
        secrets: &[NamedSecret],
        chunk: usize,
    ) -> Vec<(String, u64, u64)> {
        let dir = tree(&[]);
        std::fs::write(dir.path().join("bundle.js"), text).unwrap();
        let mut scanner = Scanner::new(secrets, &ScanPolicy::default()).unwrap();
        scanner.chunk = chunk;
        let report = scanner.scan_dir(dir.path()).unwrap();
        report
            .findings
            .into_iter()
            .map(|f| (f.rule, f.line, f.column))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// A secret across a read-buffer boundary is found once, at the same place, as
        /// in a file read whole. `boundary` and `cut` put the boundary inside it.
        #[test]
        fn chunked_equals_whole(
            filler in prop::collection::vec(prop::sample::select(b"abc;=(){} \n".to_vec()), 16000),
            chunk in 1usize..700,
            boundary in 0usize..4,
            cut in 0usize..200,
            which in 0usize..4,
        ) {
            let secret_value = "job-secret-value-42xyz";
            let planted = [
                key("ghp_", "Q8mZ2kP4vX7nR1tY6wB3cL9dF5hJ0sA2gE4u"),
                format!("-----BEGIN EC PRIVATE KEY-----\\n{BODY_RSA}\\n"),
                key("postgres://medusa:", "s3cr3tPassw0rd@db.internal:5432/x"),
                secret_value.to_owned(),
            ][which].clone();
            let secrets = [NamedSecret { name: "S".into(), value: secret_value.into() }];
            // Where buffers end: the first read fills the whole buffer, later reads
            // add `chunk` bytes each.
            let overlap = Scanner::new(&secrets, &ScanPolicy::default()).unwrap().overlap;
            let end = chunk + overlap + BACK + boundary * chunk;
            let at = end - 1 - cut.min(planted.len() - 1);
            let mut text = filler[..at].to_vec();
            text.extend_from_slice(format!("\"{planted}\"").as_bytes());
            text.extend_from_slice(&filler[at..]);
            let whole = findings_with_chunk(&text, &secrets, 1 << 20);
            let chunked = findings_with_chunk(&text, &secrets, chunk);
            prop_assert_eq!(whole.len(), 1, "{:?}", whole);
            prop_assert_eq!(chunked, whole);
        }
    }
}
