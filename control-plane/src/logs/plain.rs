//! A log as plain text: ANSI escape sequences (colours, cursor moves, the
//! `\e[0K` of GitLab's section markers) taken out, for an editor or `grep`.
//! A sequence cut between two chunks is still recognised.

#[derive(Default)]
pub struct PlainText {
    parser: vte::Parser,
}

/// What a terminal would print, and the line feeds and tabs that lay it out.
struct Printed<'a>(&'a mut Vec<u8>);

impl vte::Perform for Printed<'_> {
    fn print(&mut self, c: char) {
        let mut utf8 = [0; 4];
        self.0
            .extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
    }

    fn execute(&mut self, byte: u8) {
        if matches!(byte, b'\n' | b'\t') {
            self.0.push(byte);
        }
    }
}

impl PlainText {
    pub fn strip(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(chunk.len());
        self.parser.advance(&mut Printed(&mut out), chunk);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_and_markers_go_text_and_layout_stay() {
        let mut plain = PlainText::default();
        let log = "\x1b[31mError:\x1b[0m caf\u{e9}\tdone\n\x1b[0Ksection_start:1:install\r\x1b[0KInstall\n";
        // Cut inside an escape sequence and inside a character.
        let cut = [3, 17];
        let bytes = log.as_bytes();
        let mut out = plain.strip(&bytes[..cut[0]]);
        out.extend(plain.strip(&bytes[cut[0]..cut[1]]));
        out.extend(plain.strip(&bytes[cut[1]..]));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Error: caf\u{e9}\tdone\nsection_start:1:installInstall\n"
        );
    }
}
