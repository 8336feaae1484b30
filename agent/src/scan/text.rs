//! What a scanned run of bytes is, and how a secret is shown: text or binary
//! by content, whether a match sits inside a long base64 run, and a secret
//! redacted to a short prefix or named by a fingerprint.

use sha2::{Digest, Sha256};

/// Text or binary, by content: a NUL byte, a known binary magic number, or mostly
/// non-text bytes mean binary.
pub fn looks_binary(head: &[u8]) -> bool {
    const MAGIC: &[&[u8]] = &[
        b"\x89PNG",
        b"\xff\xd8\xff",
        b"GIF8",
        b"wOFF",
        b"wOF2",
        b"PK\x03\x04",
        b"\x1f\x8b",
        b"%PDF",
        b"OTTO",
        b"(\xb5/\xfd",
        b"7z\xbc\xaf",
    ];
    if MAGIC.iter().any(|magic| head.starts_with(magic)) {
        return true;
    }
    if head.len() >= 12
        && &head[..4] == b"RIFF"
        && (&head[8..12] == b"WEBP" || &head[8..12] == b"WAVE")
    {
        return true;
    }
    if memchr::memchr(0, head).is_some() {
        return true;
    }
    let text = match std::str::from_utf8(head) {
        Ok(_) => return false,
        // A multi-byte character cut at the sniff's end is still text.
        Err(error) if error.error_len().is_none() => return false,
        Err(_) => head,
    };
    let odd = text
        .iter()
        .filter(|b| (**b < 0x20 && !b"\t\n\r\x0c".contains(b)) || **b == 0x7f)
        .count();
    odd * 10 > text.len()
}

fn is_base64_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'+' | b'/' | b'=')
}

/// Whether `hay[start..end]` is part of a long base64 run (a data URI's image or
/// font), where any token-like pattern turns up by chance.
pub(super) fn inside_base64_run(hay: &[u8], start: usize, end: usize) -> bool {
    const RUN: usize = 16;
    let before = hay[..start]
        .iter()
        .rev()
        .take(RUN)
        .take_while(|b| is_base64_byte(**b))
        .count();
    let after = hay[end..]
        .iter()
        .take(RUN)
        .take_while(|b| is_base64_byte(**b))
        .count();
    before >= RUN || after >= RUN
}

/// A short prefix: the format's own prefix plus at most four characters, and never
/// more than half of the secret (the extra characters: at most a quarter).
pub fn redact(secret: &[u8], shown_prefix: usize) -> String {
    let extra = 4.min(secret.len() / 4);
    let mut shown = (shown_prefix + extra).min(secret.len() / 2);
    // Never cut a UTF-8 character in two (a job secret may hold any text).
    while shown > 0 && secret.get(shown).is_some_and(|b| b & 0xC0 == 0x80) {
        shown -= 1;
    }
    let prefix = String::from_utf8_lossy(&secret[..shown]);
    format!("{prefix}…")
}

/// 16 hex digits of sha256(rule, secret): names a finding in an allowlist without
/// holding the secret, and stays the same when the file's name or layout changes.
pub fn fingerprint(rule: &str, secret: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(rule.as_bytes());
    hasher.update([0]);
    hasher.update(secret);
    hex::encode(&hasher.finalize()[..8])
}
