//! What a line of a release's log says about itself: the service that printed
//! it (the agent prefixes runtime lines `server | `, migrations' `migrations | `)
//! and its level where it carries one (Medusa's logger, Next.js's marks, JSON
//! loggers). The Runtime tab filters by them and log drains send them as
//! OpenTelemetry's service and severity.

use super::plain::PlainText;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    pub const ALL: [Level; 4] = [Level::Error, Level::Warn, Level::Info, Level::Debug];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }

    pub fn parse(text: &str) -> Option<Level> {
        match text.to_ascii_lowercase().as_str() {
            "error" | "err" | "fatal" | "critical" | "crit" | "panic" => Some(Level::Error),
            "warn" | "warning" => Some(Level::Warn),
            "info" | "notice" | "http" | "log" => Some(Level::Info),
            "debug" | "verbose" | "silly" | "trace" => Some(Level::Debug),
            _ => None,
        }
    }

    /// OpenTelemetry's severity number for the level.
    pub fn severity_number(self) -> u8 {
        match self {
            Level::Debug => 5,
            Level::Info => 9,
            Level::Warn => 13,
            Level::Error => 17,
        }
    }
}

/// The services a release's log names.
pub const SERVICES: [&str; 4] = ["server", "worker", "migrations", "storefront"];

/// A line's service and the text after its prefix: `server | ready` →
/// (`server`, `ready`).
pub fn service_of(line: &str) -> (Option<&'static str>, &str) {
    for service in SERVICES {
        if let Some(rest) = line
            .strip_prefix(service)
            .and_then(|rest| rest.strip_prefix(" | "))
        {
            return (Some(service), rest);
        }
    }
    (None, line)
}

/// The level a line says it is at, if it says. Colours are taken off first.
pub fn level_of(text: &str) -> Option<Level> {
    let plain = if text.contains('\x1b') {
        String::from_utf8_lossy(&PlainText::default().strip(text.as_bytes())).into_owned()
    } else {
        text.to_owned()
    };
    let line = plain.trim_start();
    // A JSON logger's line: {"level": "warn", …} or pino's {"level": 40, …}.
    if line.starts_with('{') {
        if let Ok(serde_json::Value::Object(fields)) = serde_json::from_str(line) {
            return match fields.get("level").or_else(|| fields.get("severity")) {
                Some(serde_json::Value::String(level)) => Level::parse(level),
                Some(serde_json::Value::Number(number)) => match number.as_u64()? {
                    0..=29 => Some(Level::Debug),
                    30..=39 => Some(Level::Info),
                    40..=49 => Some(Level::Warn),
                    _ => Some(Level::Error),
                },
                _ => None,
            };
        }
    }
    // Next.js marks its lines: ⨯ an error, ⚠ a warning, ✓ and ▲ news.
    if line.starts_with('⨯') {
        return Some(Level::Error);
    }
    if line.starts_with('⚠') {
        return Some(Level::Warn);
    }
    if line.starts_with('✓') || line.starts_with('▲') {
        return Some(Level::Info);
    }
    // Medusa's logger and most others: `info:    Server is ready`,
    // `[WARN] …`, `ERROR …`, `Error: …`.
    let word: String = line
        .trim_start_matches('[')
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect();
    let after = line.trim_start_matches('[')[word.len()..].chars().next();
    if matches!(after, Some(':' | ']' | ' ' | '\t') | None) && !word.is_empty() {
        if let Some(level) = Level::parse(&word) {
            // `Log in` is prose, not a level: a lone word needs its colon,
            // bracket or capitals.
            let marked =
                matches!(after, Some(':' | ']')) || word.chars().all(|c| c.is_ascii_uppercase());
            if marked {
                return Some(level);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_come_from_the_agents_prefix() {
        assert_eq!(service_of("server | ready"), (Some("server"), "ready"));
        assert_eq!(
            service_of("migrations | applied 3"),
            (Some("migrations"), "applied 3")
        );
        assert_eq!(service_of("serverless | x"), (None, "serverless | x"));
    }

    #[test]
    fn levels_of_medusa_next_and_json_lines() {
        for (line, level) in [
            ("info:    Server is ready on port: 9000", Some(Level::Info)),
            (
                "\x1b[31merror\x1b[39m:   Error starting server",
                Some(Level::Error),
            ),
            ("warn:    Redis not configured", Some(Level::Warn)),
            ("[WARN] slow query", Some(Level::Warn)),
            ("ERROR connection refused", Some(Level::Error)),
            ("Error: Cannot find module 'x'", Some(Level::Error)),
            (" ⨯ Failed to fetch products", Some(Level::Error)),
            (" ⚠ metadata.metadataBase is not set", Some(Level::Warn)),
            (" ✓ Ready in 312ms", Some(Level::Info)),
            (r#"{"level":"warn","message":"x"}"#, Some(Level::Warn)),
            (r#"{"level":50,"msg":"boom"}"#, Some(Level::Error)),
            ("Log in to continue", None),
            ("listening on 9000", None),
            ("", None),
        ] {
            assert_eq!(level_of(line), level, "{line:?}");
        }
    }
}
