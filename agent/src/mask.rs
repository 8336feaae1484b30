//! Replaces secret values, and their base64 forms, with `***` in a byte stream,
//! also when a value is split across two writes.
//!
//! The masker holds back the last `longest pattern - 1` bytes of each write, since
//! they may be the start of a secret that the next write completes.

use std::borrow::Cow;

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine;

pub const MASK: &[u8] = b"***";
/// Shorter values would mask ordinary words; they are left alone (and reported).
pub const MIN_SECRET_LEN: usize = 4;

pub struct Masker {
    patterns: Vec<Vec<u8>>,
    matcher: Option<AhoCorasick>,
    longest: usize,
    held: Vec<u8>,
}

/// The forms of a secret that may appear in output: itself, and its base64 at each
/// of the three byte alignments (only the characters the secret alone decides).
pub fn secret_forms(secret: &str) -> Vec<Vec<u8>> {
    let bytes = secret.as_bytes();
    let mut forms = vec![bytes.to_vec()];
    for engine in [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::URL_SAFE,
    ] {
        for align in 0..3usize {
            let mut padded = vec![0u8; align];
            padded.extend_from_slice(bytes);
            let encoded = engine.encode(&padded);
            let skip = (align * 8).div_ceil(6);
            let end = (padded.len() * 8) / 6;
            if end > skip && end - skip >= 8 {
                let form = encoded.as_bytes()[skip..end].to_vec();
                if !forms.contains(&form) {
                    forms.push(form);
                }
            }
        }
    }
    forms
}

impl Masker {
    pub fn new(secrets: &[String]) -> Masker {
        let mut masker = Masker {
            patterns: Vec::new(),
            matcher: None,
            longest: 0,
            held: Vec::new(),
        };
        masker.add(secrets);
        masker
    }

    /// Masks `secret` too from now on (one the build made after the log began);
    /// what is held back is masked with it.
    pub fn also(&mut self, secret: &str) {
        self.add(&[secret.to_owned()]);
    }

    fn add(&mut self, secrets: &[String]) {
        self.patterns.extend(
            secrets
                .iter()
                .filter(|secret| secret.len() >= MIN_SECRET_LEN)
                .flat_map(|secret| secret_forms(secret)),
        );
        if self.patterns.is_empty() {
            return;
        }
        self.longest = self.patterns.iter().map(Vec::len).max().unwrap_or(0);
        self.matcher = Some(
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&self.patterns)
                .expect("literal patterns always build"),
        );
    }

    /// Masks `data`; returns the bytes that are safe to emit now (`data` itself,
    /// uncopied, when there is nothing to mask).
    pub fn push<'a>(&mut self, data: &'a [u8]) -> Cow<'a, [u8]> {
        let Some(matcher) = &self.matcher else {
            return Cow::Borrowed(data);
        };
        self.held.extend_from_slice(data);
        let buf = std::mem::take(&mut self.held);
        // Anything starting before `safe` is complete in `buf` if it is a secret.
        let safe = buf.len().saturating_sub(self.longest - 1);
        let mut out = Vec::with_capacity(buf.len());
        let mut cut = 0;
        for found in matcher.find_iter(&buf) {
            if found.start() >= safe {
                break;
            }
            out.extend_from_slice(&buf[cut..found.start()]);
            out.extend_from_slice(MASK);
            cut = found.end();
        }
        let emit_to = safe.max(cut);
        out.extend_from_slice(&buf[cut..emit_to]);
        self.held = buf[emit_to..].to_vec();
        Cow::Owned(out)
    }

    /// Masks and returns everything still held back.
    pub fn finish(&mut self) -> Vec<u8> {
        let Some(matcher) = &self.matcher else {
            return Vec::new();
        };
        let buf = std::mem::take(&mut self.held);
        let mut out = Vec::with_capacity(buf.len());
        matcher.replace_all_with_bytes(&buf, &mut out, |_, _, dst| {
            dst.extend_from_slice(MASK);
            true
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask_in_pieces(secrets: &[&str], pieces: &[&[u8]]) -> String {
        let secrets: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
        let mut masker = Masker::new(&secrets);
        let mut out = Vec::new();
        for piece in pieces {
            out.extend_from_slice(&masker.push(piece));
        }
        out.extend(masker.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn whole_and_split_secrets_are_masked() {
        assert_eq!(
            mask_in_pieces(&["hunter22"], &[b"pw=hunter22;\n"]),
            "pw=***;\n"
        );
        assert_eq!(
            mask_in_pieces(&["hunter22"], &[b"pw=hun", b"ter22;\n"]),
            "pw=***;\n"
        );
        assert_eq!(
            mask_in_pieces(
                &["hunter22"],
                &[b"h", b"u", b"n", b"t", b"e", b"r", b"2", b"2"]
            ),
            "***"
        );
    }

    #[test]
    fn base64_forms_are_masked_at_every_alignment() {
        let secret = "sk_live_0123456789abcdef";
        for prefix in ["", "x", "xy"] {
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{prefix}{secret}!"));
            let masked = mask_in_pieces(&[secret], &[encoded.as_bytes()]);
            assert!(
                masked.contains("***"),
                "alignment {:?}: {masked}",
                prefix.len()
            );
        }
    }

    #[test]
    fn a_secret_added_mid_stream_is_masked_from_then_on() {
        let mut masker = Masker::new(&["hunter22".to_owned()]);
        let mut out = masker.push(b"a=hun").into_owned();
        masker.also("made-later-key");
        out.extend_from_slice(&masker.push(b"ter22 b=made-later-key\n"));
        out.extend(masker.finish());
        assert_eq!(String::from_utf8(out).unwrap(), "a=*** b=***\n");
        // A masker without secrets until then.
        let mut masker = Masker::new(&[]);
        let mut out = masker.push(b"before ").into_owned();
        masker.also("made-later-key");
        out.extend_from_slice(&masker.push(b"made-later-key"));
        out.extend(masker.finish());
        assert_eq!(String::from_utf8(out).unwrap(), "before ***");
    }

    #[test]
    fn output_without_secrets_is_untouched() {
        let text = "npm run build\n> medusa build\nok\n";
        assert_eq!(mask_in_pieces(&["s3cr3t-value"], &[text.as_bytes()]), text);
        assert_eq!(mask_in_pieces(&[], &[text.as_bytes()]), text);
    }

    proptest::proptest! {
        /// Chunked equals whole: wherever the output is cut, masking is the same, and
        /// the secret never survives.
        #[test]
        fn framing_is_invisible(
            before in "[a-z \n=]{0,80}",
            after in "[a-z \n=]{0,80}",
            cuts in proptest::collection::vec(0usize..200, 0..6),
        ) {
            let secret = "Sup3r-s3cret_value";
            let text = format!("{before}{secret}{after}{secret}");
            let whole = mask_in_pieces(&[secret], &[text.as_bytes()]);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
            cuts.sort();
            let mut pieces: Vec<&[u8]> = Vec::new();
            let mut start = 0;
            for cut in cuts {
                pieces.push(&text.as_bytes()[start..cut]);
                start = cut;
            }
            pieces.push(&text.as_bytes()[start..]);
            let chunked = mask_in_pieces(&[secret], &pieces);
            proptest::prop_assert_eq!(&chunked, &whole);
            proptest::prop_assert!(!chunked.contains(secret));
            proptest::prop_assert_eq!(chunked.matches("***").count(), 2);
        }
    }

    #[test]
    fn very_short_values_are_not_masked() {
        assert_eq!(mask_in_pieces(&["ab"], &[b"abc"]), "abc");
    }
}
