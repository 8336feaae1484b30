//! `.env` files in and out: what `POST …/variables/import` reads and
//! `GET …/variables/export` writes.
//!
//! Read: `NAME=value` lines, an optional `export ` in front, `#` comments,
//! values bare (a ` #` starts a comment), in single quotes (literal) or in
//! double quotes (`\n`, `\r`, `\t`, `\"`, `\\` escapes), quoted values over
//! several lines. A `$` is kept as it is: nothing is substituted. The `.env`
//! crates substitute `${NAME}` from the process's own environment too, which
//! on a server would copy its secrets into a variable, so this reads the
//! common subset itself.

/// A line that is not `NAME=value`: which, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct DotenvError {
    pub line: usize,
    pub reason: String,
}

/// The `(name, value)` pairs of a `.env` file in order, each with the line
/// it starts on.
pub fn parse(text: &str) -> Result<Vec<(usize, String, String)>, DotenvError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.lines().collect();
    let mut entries = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        let number = index + 1;
        let line = lines[index].trim();
        index += 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let error = |reason: String| DotenvError {
            line: number,
            reason,
        };
        let Some((name, rest)) = line.split_once('=') else {
            return Err(error(format!(
                "{} is not NAME=value; write each variable as NAME=value, or start a comment with #",
                shown(line)
            )));
        };
        let name = name.trim().to_owned();
        let rest = rest.trim_start();
        let value = match rest.chars().next() {
            Some(quote @ ('\'' | '"')) => {
                // The value runs to the closing quote, over lines if need be.
                let mut body = rest[1..].to_owned();
                let (value, after) = loop {
                    if let Some((value, after)) = closing(&body, quote) {
                        break (value, after);
                    }
                    let Some(next) = lines.get(index) else {
                        return Err(error(format!(
                            "the value of {name} opens a {quote} quote that never closes; close it"
                        )));
                    };
                    body.push('\n');
                    body.push_str(next);
                    index += 1;
                };
                let after = after.trim();
                if !after.is_empty() && !after.starts_with('#') {
                    return Err(error(format!(
                        "{} follows the quoted value of {name}; put a comment after # or quote the whole value",
                        shown(after)
                    )));
                }
                value
            }
            _ => match rest.find(" #") {
                Some(comment) => rest[..comment].trim_end().to_owned(),
                None => rest.trim_end().to_owned(),
            },
        };
        entries.push((number, name, value));
    }
    Ok(entries)
}

/// The value up to `quote` in `body` (escapes read in double quotes), and
/// what follows it; `None` when `body` does not close the quote.
fn closing(body: &str, quote: char) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = body.char_indices();
    while let Some((at, c)) = chars.next() {
        if c == quote {
            return Some((value, &body[at + 1..]));
        }
        if quote == '"' && c == '\\' {
            match chars.next() {
                Some((_, 'n')) => value.push('\n'),
                Some((_, 'r')) => value.push('\r'),
                Some((_, 't')) => value.push('\t'),
                Some((_, escaped @ ('"' | '\\'))) => value.push(escaped),
                Some((_, other)) => {
                    value.push('\\');
                    value.push(other);
                }
                None => value.push('\\'),
            }
            continue;
        }
        value.push(c);
    }
    None
}

fn shown(text: &str) -> String {
    let cut: String = text.chars().take(60).collect();
    format!("`{cut}`")
}

/// A value as a `.env` line writes it: bare when that reads back the same,
/// else in single quotes (literal everywhere), else in double quotes.
pub fn quote(value: &str) -> String {
    let bare = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_-./:@+,%".contains(&b));
    if bare {
        value.to_owned()
    } else if !value.contains('\'') && !value.contains('\n') && !value.contains('\r') {
        format!("'{value}'")
    } else {
        let mut quoted = String::from('"');
        for c in value.chars() {
            match c {
                '"' => quoted.push_str("\\\""),
                '\\' => quoted.push_str("\\\\"),
                '\n' => quoted.push_str("\\n"),
                '\r' => quoted.push_str("\\r"),
                other => quoted.push(other),
            }
        }
        quoted.push('"');
        quoted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(text: &str) -> Vec<(String, String)> {
        parse(text)
            .unwrap()
            .into_iter()
            .map(|(_, name, value)| (name, value))
            .collect()
    }

    #[test]
    fn the_common_forms_read_as_written_and_nothing_is_substituted() {
        let text = "\u{feff}# shop\nexport DATABASE_URL=postgres://u:p@db/shop\n\nPLAIN = hello world # a comment\nSINGLE='it has $HOME and # and \\n'\nDOUBLE=\"line one\\nline \\\"two\\\"\" # note\nEMPTY=\nKEY=\"-----BEGIN KEY-----\nabc\n-----END KEY-----\"\nHASH=a#b\n";
        assert_eq!(
            pairs(text),
            [
                ("DATABASE_URL", "postgres://u:p@db/shop"),
                ("PLAIN", "hello world"),
                ("SINGLE", "it has $HOME and # and \\n"),
                ("DOUBLE", "line one\nline \"two\""),
                ("EMPTY", ""),
                ("KEY", "-----BEGIN KEY-----\nabc\n-----END KEY-----"),
                ("HASH", "a#b"),
            ]
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
        );
        assert_eq!(pairs("X=${KILN_ADMIN_TOKEN}")[0].1, "${KILN_ADMIN_TOKEN}");
    }

    #[test]
    fn a_bad_line_is_named_with_what_to_do() {
        let error = parse("A=1\nNOT A VARIABLE\n").unwrap_err();
        assert_eq!(error.line, 2);
        assert!(error.reason.contains("NAME=value"), "{error}");
        let open = parse("A=1\nB=\"never closed\nC=3\n").unwrap_err();
        assert_eq!(open.line, 2);
        assert!(open.reason.contains("never closes"), "{open}");
        let trailing = parse("A='x' y").unwrap_err();
        assert!(trailing.reason.contains("`y`"), "{trailing}");
    }

    #[test]
    fn every_value_reads_back_as_it_was_quoted() {
        for value in [
            "plain",
            "",
            "with space",
            "has 'single' quotes",
            "two\nlines",
            "back\\slash and \"double\"",
            "$HOME #not a comment",
            "ünïcode",
        ] {
            let line = format!("NAME={}", quote(value));
            assert_eq!(
                pairs(&line),
                [("NAME".to_owned(), value.to_owned())],
                "{line}"
            );
        }
    }
}
