//! The credential formats the scan knows, each found in two stages: a literal keyword
//! (one Aho-Corasick pass over the file finds all keywords of all rules) and then the
//! rule's regex, run only on a small window around each keyword hit, and a check that
//! throws out placeholders, documentation examples and public values.
//!
//! Keywords are case-sensitive, at least three bytes long and at most 64 in all, so
//! that the keyword pass runs on Teddy (SIMD); rules for words people spell in any
//! case list the spellings that occur, without the first letter (`assword` serves
//! `password` and `Password`).

use base64::Engine;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Medium,
    High,
    Critical,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        })
    }
}

/// A regex match worth judging: the whole match and the secret within it.
pub struct Candidate<'a> {
    pub whole: &'a [u8],
    pub secret: &'a [u8],
}

pub struct Rule {
    pub id: &'static str,
    pub severity: Severity,
    /// What was found, for a person: "Stripe secret key".
    pub what: &'static str,
    pub keywords: &'static [&'static str],
    /// Bytes before a keyword hit that the regex may need (a URL's scheme).
    pub look_back: usize,
    /// Bytes after a keyword hit that the regex may need.
    pub look_ahead: usize,
    pub pattern: &'static str,
    /// Capture group holding the secret itself; 0 for the whole match.
    pub secret_group: usize,
    /// Leading bytes of the secret that name its format and may be shown.
    pub shown_prefix: usize,
    /// Judges a match with the bytes after it: false throws it out.
    pub check: fn(&Candidate, after: &[u8]) -> bool,
    /// A bare token, which random base64 (images, fonts) can imitate: thrown out
    /// when it sits inside a longer base64 run.
    pub token: bool,
}

fn always(_: &Candidate, _: &[u8]) -> bool {
    true
}

/// Rules, most specific first; the regexes are compiled as bytes, ASCII only.
pub static RULES: &[Rule] = &[
    Rule {
        id: "private-key",
        severity: Severity::Critical,
        what: "private key (PEM)",
        keywords: &["-----BEGIN"],
        look_back: 0,
        look_ahead: 96,
        pattern: r"-----BEGIN (?:(?:RSA|EC|DSA|OPENSSH|ENCRYPTED|PGP) )?PRIVATE KEY(?: BLOCK)?-----",
        secret_group: 0,
        shown_prefix: usize::MAX,
        check: pem_has_body,
        token: false,
    },
    Rule {
        id: "aws-access-key-id",
        severity: Severity::Critical,
        what: "AWS access key id",
        keywords: &["AKIA", "ASIA", "ABIA", "ACCA"],
        look_back: 1,
        look_ahead: 24,
        pattern: r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}\b",
        secret_group: 0,
        shown_prefix: 4,
        check: not_placeholder_check,
        token: true,
    },
    Rule {
        id: "aws-secret-access-key",
        severity: Severity::Critical,
        what: "AWS secret access key",
        // Shared with the generic rule: every spelling of the name holds one of these.
        keywords: &["ecret", "ECRET"],
        look_back: 12,
        look_ahead: 120,
        pattern: r#"(?i)(?:aws_?secret(?:_?access)?_?key|secret_?access_?key)\\?["']?\s*(?:[:=]|=>)\s*\\?["'`]?([A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|$)"#,
        secret_group: 1,
        shown_prefix: 0,
        check: not_placeholder_check,
        token: false,
    },
    Rule {
        id: "stripe-secret-key",
        severity: Severity::Critical,
        what: "Stripe secret or restricted key",
        keywords: &["sk_", "rk_"],
        look_back: 1,
        look_ahead: 256,
        pattern: r"\b[sr]k_(?:live|test)_[0-9A-Za-z]{20,247}\b",
        secret_group: 0,
        shown_prefix: 8,
        check: not_placeholder_check,
        token: true,
    },
    Rule {
        id: "stripe-webhook-secret",
        severity: Severity::Critical,
        what: "Stripe webhook signing secret",
        keywords: &["whsec_"],
        look_back: 1,
        look_ahead: 128,
        pattern: r"\bwhsec_[A-Za-z0-9+/=]{24,}",
        secret_group: 0,
        shown_prefix: 6,
        check: not_placeholder_check,
        token: true,
    },
    Rule {
        id: "medusa-secret-api-key",
        severity: Severity::Critical,
        what: "Medusa secret API key",
        keywords: &["sk_"],
        look_back: 1,
        look_ahead: 72,
        pattern: r"\bsk_[0-9a-f]{64}\b",
        secret_group: 0,
        shown_prefix: 3,
        check: always,
        token: true,
    },
    Rule {
        id: "github-token",
        severity: Severity::Critical,
        what: "GitHub token",
        keywords: &["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"],
        look_back: 1,
        look_ahead: 260,
        pattern: r"\b(?:gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{60,240})\b",
        secret_group: 0,
        shown_prefix: 4,
        check: not_placeholder_check,
        token: true,
    },
    Rule {
        id: "slack-token",
        severity: Severity::High,
        what: "Slack token",
        keywords: &["xox", "xapp-"],
        look_back: 1,
        look_ahead: 260,
        pattern: r"\b(?:xox[abeprs]-[0-9A-Za-z-]{10,250}|xapp-\d-[A-Z0-9]+-\d+-[a-z0-9]+)",
        secret_group: 0,
        shown_prefix: 5,
        check: not_placeholder_check,
        token: true,
    },
    Rule {
        id: "slack-webhook-url",
        severity: Severity::High,
        what: "Slack incoming webhook URL",
        keywords: &["hooks.slack.com/"],
        look_back: 0,
        look_ahead: 160,
        pattern: r"hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/_-]{30,120}",
        secret_group: 0,
        shown_prefix: 25,
        check: not_placeholder_check,
        token: false,
    },
    Rule {
        id: "google-api-key",
        severity: Severity::High,
        what: "Google API key",
        keywords: &["AIza"],
        look_back: 1,
        look_ahead: 40,
        pattern: r"\bAIza[0-9A-Za-z_-]{35}\b",
        secret_group: 0,
        shown_prefix: 4,
        check: not_placeholder_check,
        token: true,
    },
    Rule {
        id: "google-oauth-client-secret",
        severity: Severity::Critical,
        what: "Google OAuth client secret",
        keywords: &["GOCSPX-"],
        look_back: 1,
        look_ahead: 40,
        pattern: r"\bGOCSPX-[A-Za-z0-9_-]{28}\b",
        secret_group: 0,
        shown_prefix: 7,
        check: not_placeholder_check,
        token: true,
    },
    Rule {
        id: "gcp-service-account",
        severity: Severity::Critical,
        what: "Google Cloud service-account key (JSON)",
        keywords: &["service_account"],
        look_back: 24,
        look_ahead: 512,
        pattern: r#"type\\?"\s*:\s*\\?"service_account"#,
        secret_group: 0,
        shown_prefix: usize::MAX,
        check: service_account_has_key,
        token: false,
    },
    Rule {
        id: "sendgrid-api-key",
        severity: Severity::Critical,
        what: "SendGrid API key",
        keywords: &["SG."],
        look_back: 1,
        look_ahead: 72,
        pattern: r"\bSG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}\b",
        secret_group: 0,
        shown_prefix: 3,
        check: not_placeholder_check,
        token: true,
    },
    Rule {
        id: "twilio-api-key",
        severity: Severity::High,
        what: "Twilio API key",
        // Two-byte keywords would slow the keyword pass for every file; the key's
        // first hex digit makes three.
        keywords: &[
            "SK0", "SK1", "SK2", "SK3", "SK4", "SK5", "SK6", "SK7", "SK8", "SK9", "SKa", "SKb",
            "SKc", "SKd", "SKe", "SKf",
        ],
        look_back: 1,
        look_ahead: 36,
        pattern: r"\bSK[0-9a-f]{32}\b",
        secret_group: 0,
        shown_prefix: 2,
        check: not_placeholder_check,
        token: true,
    },
    Rule {
        id: "twilio-api-secret",
        severity: Severity::Critical,
        what: "Twilio API secret (beside its key sid)",
        // A minified `twilio("SK…", "…")` names neither; the sid before it does.
        keywords: &[
            "SK0", "SK1", "SK2", "SK3", "SK4", "SK5", "SK6", "SK7", "SK8", "SK9", "SKa", "SKb",
            "SKc", "SKd", "SKe", "SKf",
        ],
        look_back: 1,
        look_ahead: 90,
        pattern: r#"\bSK[0-9a-f]{32}["'`]\s*,\s*["'`]([A-Za-z0-9]{32})["'`]"#,
        secret_group: 1,
        shown_prefix: 0,
        check: not_placeholder_check,
        token: false,
    },
    Rule {
        id: "openai-api-key",
        severity: Severity::Critical,
        what: "OpenAI API key",
        keywords: &["sk-"],
        look_back: 1,
        look_ahead: 220,
        pattern: r"\bsk-(?:(?:proj|svcacct|admin)-[A-Za-z0-9_-]{40,200}|[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20})\b",
        secret_group: 0,
        shown_prefix: 3,
        check: not_placeholder_check,
        token: true,
    },
    Rule {
        id: "npm-token",
        severity: Severity::Critical,
        what: "npm access token",
        keywords: &["npm_"],
        look_back: 1,
        look_ahead: 40,
        pattern: r"\bnpm_[A-Za-z0-9]{36}\b",
        secret_group: 0,
        shown_prefix: 4,
        check: not_placeholder_check,
        token: true,
    },
    Rule {
        id: "npmrc-auth",
        severity: Severity::Critical,
        what: "npm registry credential (.npmrc)",
        keywords: &["_auth", "_password"],
        look_back: 0,
        look_ahead: 200,
        // Token characters only: `_authToken=([^$].*)` is a regex in some tool's source.
        pattern: r#"_(?:authToken|auth|password)\s*=\s*"?([A-Za-z0-9+/=_.:-]{8,})"#,
        secret_group: 1,
        shown_prefix: 0,
        check: npm_credential_is_real,
        token: false,
    },
    Rule {
        id: "jwt",
        severity: Severity::Medium,
        what: "JSON Web Token",
        keywords: &["eyJ"],
        look_back: 1,
        look_ahead: 2048,
        pattern: r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{16,}",
        secret_group: 0,
        shown_prefix: 3,
        check: jwt_header_parses,
        token: true,
    },
    Rule {
        id: "url-password",
        severity: Severity::Critical,
        what: "URL with an embedded password",
        keywords: &["://"],
        look_back: 16,
        look_ahead: 200,
        pattern: r"\b([A-Za-z][A-Za-z0-9+.-]{1,15})://([^\s/:@\x22'`<>\\]{1,64}):([^\s/@\x22'`<>\\]{1,128})@[A-Za-z0-9._-]+",
        secret_group: 3,
        shown_prefix: 0,
        check: url_password_is_real,
        token: false,
    },
    Rule {
        id: "basic-auth-header",
        severity: Severity::High,
        what: "HTTP basic-auth credentials (base64)",
        keywords: &["Basic ", "basic "],
        look_back: 0,
        look_ahead: 200,
        pattern: r"[Bb]asic ([A-Za-z0-9+/]{8,}={0,2})",
        secret_group: 1,
        shown_prefix: 0,
        check: basic_auth_decodes,
        token: false,
    },
    Rule {
        id: "generic-secret-assignment",
        severity: Severity::Medium,
        what: "password, secret, API key or token with a high-entropy value",
        // Without their first letter, so one keyword serves `password` and `Password`.
        keywords: &[
            "assword", "ASSWORD", "asswd", "ASSWD", "pass", "Pass", "PASS", "ecret", "ECRET",
            "pi_key", "piKey", "PI_KEY", "pikey", "PIKEY", "pi-key", "oken", "OKEN",
        ],
        look_back: 2,
        look_ahead: 320,
        // `pass` as a whole key (nodemailer's `auth: {user, pass}`) or the end
        // of one (`smtp_pass`, `SMTP_PASS`, `smtpPass`), not `bypass`. A value
        // is a generated credential, or Google's app password (`abcd efgh ijkl
        // mnop`), which mail settings carry with its spaces.
        pattern: r#"(?i)(?:password|passwd|\bpass\b|_pass\b|(?-i:[a-z0-9]Pass\b)|secret|api[_-]?key|token)[A-Za-z0-9_-]{0,30}\\?["'`]?\s*(?:[:=]|:=|=>)\s*\\?["'`]((?-i:[a-z]{4} [a-z]{4} [a-z]{4} [a-z]{4})|[^\s"'`\\]{12,256})\\?["'`]"#,
        secret_group: 1,
        shown_prefix: 0,
        check: high_entropy_value,
        token: false,
    },
];

/// Values that stand for a secret without being one: documentation examples,
/// placeholders, references to the environment.
pub fn is_placeholder(value: &[u8]) -> bool {
    let text = String::from_utf8_lossy(value).to_ascii_lowercase();
    const WORDS: &[&str] = &[
        "example",
        "placeholder",
        "your-",
        "your_",
        "yourkey",
        "redacted",
        "changeme",
        "change-me",
        "change_me",
        "replace",
        "dummy",
        "sample",
        "xxxx",
        "****",
        "....",
        "<",
        "${",
        "{{",
        "process.env",
        "import.meta.env",
        "%s",
        "todo",
        "insert",
        "secret-here",
        "notreal",
        "not-real",
        "fake",
    ];
    // Stripe's and AWS's published example keys, which appear in docs and tests.
    const KNOWN_EXAMPLES: &[&str] = &[
        "sk_test_4ec39hqlyjwdarjtt1zdp7dc",
        "wjalrxutnfemi/k7mdeng/bpxrficyexamplekey",
    ];
    if WORDS.iter().any(|word| text.contains(word))
        || KNOWN_EXAMPLES.iter().any(|known| text.starts_with(known))
    {
        return true;
    }
    // One character repeated (`aaaaaaaa`, `00000000`) is a filler.
    let first = value.first().copied();
    value.iter().all(|byte| Some(*byte) == first)
}

fn not_placeholder_check(candidate: &Candidate, _: &[u8]) -> bool {
    !is_placeholder(candidate.whole)
}

/// A PEM header counts only with a key body after it (64+ base64 characters, lines
/// joined by real newlines or by `\n` escapes in a JS/JSON string).
fn pem_has_body(_: &Candidate, after: &[u8]) -> bool {
    let mut body = 0;
    let mut rest = after;
    while let Some((&byte, tail)) = rest.split_first() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' | b'=' => body += 1,
            b'\r' | b'\n' | b' ' | b'\t' => {}
            // `\n` in a JS string, `\\n` once more escaped in a source map.
            b'\\' => {
                let escapes = tail.iter().take_while(|b| **b == b'\\').count();
                match tail.get(escapes) {
                    Some(b'n' | b'r') => {
                        rest = &tail[escapes + 1..];
                        continue;
                    }
                    _ => break,
                }
            }
            // `Proc-Type:` / `DEK-Info:` headers of encrypted keys.
            b':' | b'-' | b',' => {}
            _ => break,
        }
        if body >= 64 {
            return true;
        }
        rest = tail;
    }
    false
}

fn service_account_has_key(_: &Candidate, after: &[u8]) -> bool {
    let window = &after[..after.len().min(4096)];
    memchr::memmem::find(window, b"private_key").is_some()
}

/// The signature of the sample token on jwt.io, which documentation copies.
const JWT_IO_SAMPLE_SIGNATURE: &[u8] = b"SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";

fn jwt_header_parses(candidate: &Candidate, _: &[u8]) -> bool {
    if candidate.whole.ends_with(JWT_IO_SAMPLE_SIGNATURE) {
        return false;
    }
    let header = candidate
        .whole
        .split(|b| *b == b'.')
        .next()
        .unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
        .is_some_and(|value| value.get("alg").is_some())
}

fn url_password_is_real(candidate: &Candidate, _: &[u8]) -> bool {
    let password = candidate.secret;
    let host = candidate
        .whole
        .rsplit(|b| *b == b'@')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    password.len() >= 3
        && !is_placeholder(password)
        && !matches!(
            password.to_ascii_lowercase().as_slice(),
            b"password" | b"pass" | b"passwd" | b"pwd" | b"secret" | b"foo" | b"bar" | b"baz" | b"test"
        )
        // `host:port@` and `user:${PASSWORD}` are not passwords.
        && !password.iter().all(u8::is_ascii_digit)
        // No one holds credentials for the names reserved for documentation (RFC 2606).
        && !is_documentation_host(&host)
        // A default for this machine (`postgres://postgres:postgres@localhost/…` in
        // help text and `.env.template`) opens nothing anywhere else.
        && !is_loopback_host(&host)
}

fn is_loopback_host(host: &[u8]) -> bool {
    let name = host
        .split(|b| *b == b':' || *b == b'/')
        .next()
        .unwrap_or_default();
    name == b"localhost"
        || name.starts_with(b"127.")
        || name == b"0.0.0.0"
        || host.starts_with(b"[::1]")
}

fn is_documentation_host(host: &[u8]) -> bool {
    [b"example.com".as_slice(), b"example.org", b"example.net"]
        .iter()
        .any(|domain| host == *domain || host.ends_with(&[b".", *domain].concat()))
        || [b".example".as_slice(), b".test", b".invalid"]
            .iter()
            .any(|tld| host.ends_with(tld))
}

/// An npm credential, not the name of one (`_authToken=MYTOKEN1`, `NPM_TOKEN`): real
/// ones (`npm_…`, a UUID, base64) have lowercase letters.
fn npm_credential_is_real(candidate: &Candidate, _: &[u8]) -> bool {
    !is_placeholder(candidate.whole) && candidate.secret.iter().any(u8::is_ascii_lowercase)
}

fn basic_auth_decodes(candidate: &Candidate, _: &[u8]) -> bool {
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(candidate.secret) else {
        return false;
    };
    let Ok(text) = std::str::from_utf8(&decoded) else {
        return false;
    };
    let Some((user, password)) = text.split_once(':') else {
        return false;
    };
    // Medusa's secret API keys authenticate as the Basic user with no password.
    let medusa_secret = |part: &str| {
        part.strip_prefix("sk_")
            .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    if medusa_secret(user) || medusa_secret(password) {
        return true;
    }
    !user.is_empty()
        && password.len() >= 4
        && text.chars().all(|c| !c.is_control())
        && !is_placeholder(password.as_bytes())
}

/// Shannon entropy in bits per byte.
pub fn entropy(value: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for byte in value {
        counts[*byte as usize] += 1;
    }
    let len = value.len() as f64;
    counts
        .iter()
        .filter(|count| **count > 0)
        .map(|count| {
            let p = f64::from(*count) / len;
            -p * p.log2()
        })
        .sum()
}

fn is_uuid(value: &[u8]) -> bool {
    value.len() == 36
        && value.iter().enumerate().all(|(i, byte)| match i {
            8 | 13 | 18 | 23 => *byte == b'-',
            _ => byte.is_ascii_hexdigit(),
        })
}

/// A generic `secret = "…"` counts only when the value looks machine-made: long,
/// high entropy, several kinds of character, and not an id, path or URL.
fn high_entropy_value(candidate: &Candidate, _: &[u8]) -> bool {
    let value = candidate.secret;
    if is_app_password(value) {
        return true;
    }
    // Publishable keys (Medusa's `pk_` + hex, Stripe's `pk_live_…`) are public by
    // design: storefronts send them in `x-publishable-api-key`.
    if value.starts_with(b"pk_")
        || candidate
            .whole
            .to_ascii_lowercase()
            .windows(11)
            .any(|window| window == b"publishable")
    {
        return false;
    }
    // Generated credentials are printable ASCII; anything else is a word in some
    // language (the Medusa admin ships `secret: "秘密のAPIキー"`).
    if !value.iter().all(u8::is_ascii_graphic) {
        return false;
    }
    let classes = [
        value.iter().any(u8::is_ascii_lowercase),
        value.iter().any(u8::is_ascii_uppercase),
        value.iter().any(u8::is_ascii_digit),
        value.iter().any(|b| !b.is_ascii_alphanumeric()),
    ]
    .iter()
    .filter(|present| **present)
    .count();
    classes >= 2
        && entropy(value) >= 3.5
        && !is_uuid(value)
        && !is_placeholder(value)
        && !value.contains(&b'.') // dotted paths, file names, hosts, i18n keys
        && !value.starts_with(b"/")
        && !value.contains(&b':')
}

/// Google's app password as shown to be copied: four groups of four letters.
fn is_app_password(value: &[u8]) -> bool {
    value.len() == 19
        && value.chunks(5).all(|group| {
            group[..4].iter().all(u8::is_ascii_lowercase) && group.get(4).is_none_or(|b| *b == b' ')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_fit_the_fast_keyword_pass() {
        let mut keywords: Vec<&str> = RULES
            .iter()
            .flat_map(|r| r.keywords.iter().copied())
            .collect();
        keywords.sort_unstable();
        keywords.dedup();
        assert!(
            keywords.len() <= 64,
            "{} keywords; Teddy takes 64",
            keywords.len()
        );
        assert!(keywords.iter().all(|k| k.len() >= 3), "{keywords:?}");
    }
}
