//! The one judgement of what a well-formed value of the protocol looks like: ids,
//! commit shas, repository URLs, paths inside a repository, and the bounds of
//! every string. The control plane refuses bad input with it; the agent checks a
//! job with it before anything touches the disk or runs git. Pure functions: no
//! I/O.
//!
//! Each check returns the reason a value is refused, for a message that names
//! the field.

/// Longest repository URL accepted.
pub const MAX_URL: usize = 2048;
/// Longest name (project, environment, agent, label).
pub const MAX_NAME: usize = 100;
/// Longest branch name (git allows more; hosts cap near this).
pub const MAX_BRANCH: usize = 255;
/// Longest author.
pub const MAX_AUTHOR: usize = 255;
/// Longest commit message kept.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Longest path inside a repository.
pub const MAX_PATH: usize = 1024;
/// Longest repository token.
pub const MAX_TOKEN: usize = 4096;
/// Most build variables per environment.
pub const MAX_VARIABLES: usize = 1000;
/// Longest variable name.
pub const MAX_VARIABLE_NAME: usize = 256;
/// Longest variable value.
pub const MAX_VARIABLE_VALUE: usize = 64 * 1024;
/// Most labels on an agent or a project.
pub const MAX_LABELS: usize = 64;
/// Most entries in each secret-scan allowlist, and the longest entry.
pub const MAX_ALLOWLIST: usize = 1000;
pub const MAX_ALLOWLIST_ENTRY: usize = 1024;

/// The id prefixes the control plane hands out (`{prefix}_` + 32 lowercase hex).
pub mod prefix {
    pub const AGENT: &str = "agt";
    pub const PROJECT: &str = "prj";
    pub const ENVIRONMENT: &str = "env";
    pub const DEPLOYMENT: &str = "dpl";
    pub const JOB: &str = "job";
}

/// An id as the control plane makes them: `prefix_` and 32 lowercase hex digits.
pub fn id(value: &str, prefix: &str) -> Result<(), String> {
    let ok = value
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|hex| {
            hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a {prefix} id ({prefix}_ and 32 lowercase hex digits)",
            shorten(value)
        ))
    }
}

/// A full commit id: 40 (SHA-1) or 64 (SHA-256) hex digits.
pub fn commit_sha(value: &str) -> Result<(), String> {
    let hex = value.bytes().all(|b| b.is_ascii_hexdigit());
    if hex && (value.len() == 40 || value.len() == 64) {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a full commit id (40 or 64 hex digits)",
            shorten(value)
        ))
    }
}

/// What kind of place a repository URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepositoryKind {
    /// `https://`, `http://`, `ssh://` or scp-like `user@host:path`.
    Remote,
    /// `file://` or an absolute path on the machine that clones.
    Local,
}

fn host_ok(host: &str) -> bool {
    !host.is_empty()
        && !host.starts_with('-')
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b))
}

/// A repository URL git may be pointed at. Remote ones always; local ones
/// (`file://`, `/abs/path`) only where `allow_local`. Never a value git would read
/// as an option (`-…`), a transport helper (`ext::`, `fd::`), or one with
/// whitespace or control characters.
pub fn repository_url(value: &str, allow_local: bool) -> Result<RepositoryKind, String> {
    let refuse = |why: &str| Err(format!("{:?} {why}", shorten(value)));
    if value.is_empty() {
        return refuse("is empty; give the repository's clone URL");
    }
    if value.len() > MAX_URL {
        return refuse(&format!("is longer than {MAX_URL} bytes"));
    }
    if value.starts_with('-') {
        return refuse("starts with `-`, which git would read as an option");
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return refuse("contains whitespace or control characters");
    }
    if value.contains("::") {
        return refuse("uses a git transport helper (`<transport>::`), which Kiln never runs");
    }
    let local = || {
        if allow_local {
            Ok(RepositoryKind::Local)
        } else {
            Err(format!(
                "{:?} is a local path; Kiln clones https://, http://, ssh:// or user@host:path URLs (a server started with --allow-local-repositories, and agents with allow_local_repositories = true, accept local ones)",
                shorten(value)
            ))
        }
    };
    if let Some((scheme, rest)) = value.split_once("://") {
        return match scheme {
            "https" | "http" | "ssh" => {
                let authority = rest.split('/').next().unwrap_or_default();
                let host = authority.rsplit('@').next().unwrap_or_default();
                if host_ok(host) {
                    Ok(RepositoryKind::Remote)
                } else {
                    refuse("has no valid host")
                }
            }
            "file" => local(),
            _ => refuse("is not an https://, http://, ssh:// or user@host:path URL"),
        };
    }
    if value.starts_with('/') {
        return local();
    }
    // scp-like: user@host:path, with no slash before the colon.
    if let Some((user_host, path)) = value.split_once(':') {
        if let Some((user, host)) = user_host.split_once('@') {
            let user_ok = !user.is_empty()
                && user
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            if user_ok && host_ok(host) && !host.contains(':') && !path.is_empty() {
                return Ok(RepositoryKind::Remote);
            }
        }
    }
    refuse("is not an https://, http://, ssh:// or user@host:path URL")
}

/// A path inside a repository: relative, no `..`, no NUL, not empty, bounded.
/// A git host's API base URL: `https://` or `http://`, a host, no credentials
/// in it (the token travels in a header).
pub fn api_url(value: &str) -> Result<(), String> {
    let refuse = |why: &str| Err(format!("{:?} {why}", shorten(value)));
    if value.len() > MAX_URL {
        return refuse(&format!("is longer than {MAX_URL} bytes"));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return refuse("contains whitespace or control characters");
    }
    let Some(rest) = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"))
    else {
        return refuse("is not an https:// (or http://) URL, e.g. https://api.github.com");
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return refuse("carries credentials; give the token as `token`");
    }
    if !host_ok(authority) {
        return refuse("has no valid host");
    }
    Ok(())
}

/// A git host's API URL, where the server sends statuses with the project's
/// token: an `api_url` with no query or fragment (the server makes the whole
/// path), and, unless `allow_private`, a host that is neither `localhost` nor
/// an address of loopback, link-local, private or unspecified range. A name
/// that resolves to such an address is refused when the server connects.
pub fn git_host_api_url(value: &str, allow_private: bool) -> Result<(), String> {
    api_url(value)?;
    let refuse = |why: &str| Err(format!("{:?} {why}", shorten(value)));
    if value.contains(['?', '#']) {
        return refuse(
            "has a query or fragment; give the API's base URL, e.g. https://api.github.com",
        );
    }
    let rest = value.split_once("://").map_or(value, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    if !allow_private && host_is_private(authority) {
        return refuse("names a loopback, link-local or private host, which a git host's API is not; start the server with --allow-private-git-hosts to allow one");
    }
    Ok(())
}

/// Whether `authority` (`host`, `host:port`, `[v6]:port`) names this machine or
/// its private network: `localhost`, or such an address literal.
pub fn host_is_private(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| !is_public_ip(ip))
}

/// Whether `ip` is an address of the public internet: not loopback,
/// link-local, private, shared (CGNAT), unspecified, broadcast or multicast.
pub fn is_public_ip(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b)))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_ip(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// A repository URL reduced to what names the repository, so that a git host's
/// clone URL, SSH URL and web URL of one repository compare equal:
/// `https://GitHub.com/acme/shop.git`, `git@github.com:acme/shop` and
/// `ssh://git@github.com:22/acme/shop/` all give `github.com/acme/shop`. Scheme,
/// user, port, `.git` and trailing slashes go; the host (and, as hosts treat it,
/// the path) is compared without case. Local paths keep their scheme.
pub fn repository_key(url: &str) -> String {
    let url = url.trim();
    let (host_and_path, local) = match url.split_once("://") {
        Some(("file", _)) => (url, true),
        Some((_, rest)) => (rest, false),
        None if url.starts_with('/') => (url, true),
        // scp-like `user@host:path`.
        None => match url.split_once(':') {
            Some((user_host, path)) => {
                return repository_key(&format!(
                    "ssh://{user_host}/{}",
                    path.trim_start_matches('/')
                ))
            }
            None => (url, false),
        },
    };
    let trimmed = |text: &str| {
        let text = text.trim_end_matches('/');
        text.strip_suffix(".git")
            .unwrap_or(text)
            .trim_end_matches('/')
            .to_ascii_lowercase()
    };
    if local {
        return trimmed(host_and_path);
    }
    let (authority, path) = host_and_path.split_once('/').unwrap_or((host_and_path, ""));
    let host = authority.rsplit('@').next().unwrap_or_default();
    let host = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    trimmed(&format!("{host}/{path}"))
}

pub fn relative_path(value: &str) -> Result<(), String> {
    let bad = value.is_empty()
        || value.len() > MAX_PATH
        || value.starts_with('/')
        || value.starts_with('-')
        || value.contains('\0')
        || value.split('/').any(|part| part == "..");
    if bad {
        Err(format!(
            "{:?} must be a relative path inside the repository, without `..`",
            shorten(value)
        ))
    } else {
        Ok(())
    }
}

/// A string within `max` bytes, with no control characters but tabs and, where
/// `multiline`, newlines.
pub fn text(value: &str, max: usize, multiline: bool) -> Result<(), String> {
    if value.len() > max {
        return Err(format!(
            "is {} bytes, more than the {max} allowed",
            value.len()
        ));
    }
    let stray = value
        .chars()
        .any(|c| c.is_control() && c != '\t' && !(multiline && (c == '\n' || c == '\r')));
    if stray {
        return Err("contains control characters".to_owned());
    }
    Ok(())
}

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`, bounded.
pub fn variable_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = name.len() <= MAX_VARIABLE_NAME
        && matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)",
            shorten(name)
        ))
    }
}

/// A field of a job (or request) that is not what the protocol allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` {}", self.field, self.reason)
    }
}

/// A deploy job's release image: the job's own download, a sha256, a
/// well-formed reference.
fn release_image(job_id: &str, name: &str, release: &crate::ReleaseImage) -> Result<(), Invalid> {
    let field = |part: &str, checked: Result<(), String>| {
        checked.map_err(|reason| Invalid {
            field: format!("{name}.{part}"),
            reason,
        })
    };
    let own = format!("/api/v1/agent/jobs/{job_id}/artifacts/");
    let url = if release.url.starts_with(&own)
        && release.url[own.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        Ok(())
    } else {
        Err(format!("must be {own}<name>, the job's own download"))
    };
    field("url", url)?;
    let digest =
        if release.sha256.len() == 64 && release.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(())
        } else {
            Err("is not a sha256 in hex".to_owned())
        };
    field("sha256", digest)?;
    if let Some(reference) = &release.reference {
        field("reference", crate::deploy::reference_check(reference))?;
    }
    Ok(())
}

/// Every field of a job, as an agent must check it before the job touches its
/// disk or runs git: ids in the control plane's format (they name directories),
/// paths inside the repository, a repository URL git cannot mistake for an
/// option, a token that cannot end the header it travels in, every size bounded.
pub fn job(job: &crate::Job, allow_local_repositories: bool) -> Result<(), Invalid> {
    let field = |name: &str, checked: Result<(), String>| {
        checked.map_err(|reason| Invalid {
            field: name.to_owned(),
            reason,
        })
    };
    let at_most = |len: usize, max: usize| {
        if len > max {
            Err(format!("has {len} entries, more than the {max} allowed"))
        } else {
            Ok(())
        }
    };
    let within = |value: u64, max: u64| {
        if (1..=max).contains(&value) {
            Ok(())
        } else {
            Err(format!("is {value}, outside 1..={max}"))
        }
    };
    field("job_id", id(&job.job_id, prefix::JOB))?;
    field("deployment_id", id(&job.deployment_id, prefix::DEPLOYMENT))?;
    field("project_id", id(&job.project_id, prefix::PROJECT))?;
    field(
        "environment_id",
        id(&job.environment_id, prefix::ENVIRONMENT),
    )?;
    field(
        "repository_url",
        repository_url(&job.repository_url, allow_local_repositories).map(drop),
    )?;
    field("commit_sha", commit_sha(&job.commit_sha))?;
    field("branch", text(&job.branch, MAX_BRANCH, false))?;
    field("author", text(&job.author, MAX_AUTHOR, false))?;
    field("message", text(&job.message, MAX_MESSAGE, true))?;
    field("backend_path", relative_path(&job.backend_path))?;
    if let Some(path) = &job.storefront_path {
        field("storefront_path", relative_path(path))?;
    }
    if let Some(token) = &job.repository_token {
        field("repository_token", text(token, MAX_TOKEN, false))?;
    }
    field("env", at_most(job.env.len(), MAX_VARIABLES))?;
    for (index, var) in job.env.iter().enumerate() {
        field(&format!("env[{index}].name"), variable_name(&var.name))?;
        let value = if var.value.len() > MAX_VARIABLE_VALUE || var.value.contains('\0') {
            Err(format!(
                "is longer than {MAX_VARIABLE_VALUE} bytes or holds a NUL"
            ))
        } else {
            Ok(())
        };
        field(&format!("env[{index}].value"), value)?;
    }
    let scan = &job.secret_scan;
    for (name, list) in [
        ("secret_scan.allow_paths", &scan.allow_paths),
        ("secret_scan.allow_rules", &scan.allow_rules),
        ("secret_scan.allow_fingerprints", &scan.allow_fingerprints),
    ] {
        field(name, at_most(list.len(), MAX_ALLOWLIST))?;
        for entry in list {
            field(name, text(entry, MAX_ALLOWLIST_ENTRY, false))?;
        }
    }
    if let Some(cache) = &job.cache {
        let scopes = std::iter::once(&cache.scope)
            .chain(&cache.fallback_scopes)
            .chain(&cache.dropped_scopes);
        field(
            "cache",
            at_most(
                cache.fallback_scopes.len() + cache.dropped_scopes.len(),
                1000,
            ),
        )?;
        for scope in scopes {
            field("cache", text(scope, MAX_BRANCH + 16, false))?;
        }
    }
    field("attempt", within(u64::from(job.attempt), 1000))?;
    field("lease_seconds", within(job.lease_seconds, 86_400))?;
    if let Some(reference) = &job.release_reference {
        field(
            "release_reference",
            crate::deploy::reference_check(reference),
        )?;
    }
    if let Some(deploy) = &job.deploy {
        // Its values reach Caddy's config, Docker and a URL the agent fetches.
        field("deploy.settings", deploy.settings.check())?;
        release_image(&job.job_id, "deploy.backend", &deploy.backend)?;
        if let Some(storefront) = &deploy.storefront {
            release_image(&job.job_id, "deploy.storefront", storefront)?;
        }
        field(
            "deploy.environment_name",
            text(&deploy.environment_name, MAX_NAME, false),
        )?;
        field(
            "deploy.runtime_env",
            at_most(deploy.runtime_env.len(), MAX_VARIABLES),
        )?;
        for (index, var) in deploy.runtime_env.iter().enumerate() {
            field(
                &format!("deploy.runtime_env[{index}].name"),
                variable_name(&var.name),
            )?;
            let value = if var.value.len() > MAX_VARIABLE_VALUE || var.value.contains('\0') {
                Err(format!(
                    "is longer than {MAX_VARIABLE_VALUE} bytes or holds a NUL"
                ))
            } else {
                Ok(())
            };
            field(&format!("deploy.runtime_env[{index}].value"), value)?;
        }
    }
    Ok(())
}

/// A value as it may appear in a message: its first 80 characters.
pub fn shorten(value: &str) -> String {
    match value.char_indices().nth(80) {
        Some((at, _)) => format!("{}…", &value[..at]),
        None => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefix_and_32_hex() {
        assert!(id("job_0190f1a2b3c4d5e6f708192a3b4c5d6e", "job").is_ok());
        for bad in [
            "../victim",
            "job_",
            "job_0190F1A2B3C4D5E6F708192A3B4C5D6E",
            "dpl_0190f1a2b3c4d5e6f708192a3b4c5d6e",
            "job_0190f1a2b3c4d5e6f708192a3b4c5d6e/..",
        ] {
            assert!(id(bad, "job").is_err(), "{bad}");
        }
    }

    #[test]
    fn shas_are_40_or_64_hex() {
        assert!(commit_sha(&"a".repeat(40)).is_ok());
        assert!(commit_sha(&"0".repeat(64)).is_ok());
        assert!(commit_sha("--upload-pack=touch /tmp/pwned;").is_err());
        assert!(commit_sha(&"g".repeat(40)).is_err());
        assert!(commit_sha(&"a".repeat(41)).is_err());
    }

    #[test]
    fn repository_urls_are_remote_unless_local_is_allowed() {
        for url in [
            "https://github.com/acme/shop.git",
            "http://127.0.0.1:8080/shop.git",
            "ssh://git@git.example:2222/acme/shop.git",
            "git@github.com:acme/shop.git",
            "https://x-access-token:abc@git.example/shop",
        ] {
            assert_eq!(
                repository_url(url, false),
                Ok(RepositoryKind::Remote),
                "{url}"
            );
        }
        for url in ["file:///srv/git/shop.git", "/srv/git/shop.git"] {
            assert!(
                repository_url(url, false)
                    .unwrap_err()
                    .contains("local path"),
                "{url}"
            );
            assert_eq!(
                repository_url(url, true),
                Ok(RepositoryKind::Local),
                "{url}"
            );
        }
        for url in [
            "--upload-pack=touch /tmp/pwned;",
            "-uhttps://x",
            "ext::sh -c touch% /tmp/pwned",
            "fd::17",
            "git://git.example/shop.git",
            "https://",
            "https://-oProxyCommand=x/shop",
            "shop.git",
            "https://git.example/shop\n.git",
            "",
        ] {
            assert!(repository_url(url, true).is_err(), "{url}");
        }
    }

    #[test]
    fn relative_paths_stay_inside() {
        assert!(relative_path("apps/backend").is_ok());
        assert!(relative_path(".").is_ok());
        for bad in ["/etc", "../x", "a/../../b", "", "a\0b", "-rf"] {
            assert!(relative_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn text_is_bounded_and_free_of_control_characters() {
        assert!(text("Add cart\n\nBody", 100, true).is_ok());
        assert!(text("Add cart\nBody", 100, false).is_err());
        assert!(text("x\u{1b}[31m", 100, true).is_err());
        assert!(text(&"x".repeat(101), 100, true)
            .unwrap_err()
            .contains("101 bytes"));
    }

    #[test]
    fn one_repository_has_one_key_however_its_url_is_written() {
        let key = "github.com/acme/shop";
        for url in [
            "https://github.com/acme/shop.git",
            "https://GitHub.com/acme/shop",
            "http://github.com/acme/shop/",
            "git@github.com:acme/shop.git",
            "ssh://git@github.com:22/acme/shop.git",
            "git://github.com/acme/shop.git",
            "https://x-access-token:t@github.com/acme/shop.git",
        ] {
            assert_eq!(repository_key(url), key, "{url}");
        }
        assert_ne!(repository_key("https://github.com/acme/other"), key);
        assert_eq!(repository_key("file:///srv/Shop.git"), "file:///srv/shop");
    }

    #[test]
    fn git_host_api_urls_name_a_public_host_and_no_query() {
        assert!(git_host_api_url("https://api.github.com", false).is_ok());
        assert!(git_host_api_url("https://gitlab.example.com/api/v4", false).is_ok());
        for private in [
            "http://127.0.0.1:3000/api/v1",
            "http://localhost/api",
            "http://[::1]:8080",
            "http://169.254.169.254/latest",
            "http://10.0.0.7",
            "http://192.168.1.1:8443/x",
            "http://172.20.0.1",
            "http://[fd00::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://0.0.0.0/",
        ] {
            let error = git_host_api_url(private, false).unwrap_err();
            assert!(
                error.contains("--allow-private-git-hosts"),
                "{private}: {error}"
            );
            assert!(git_host_api_url(private, true).is_ok(), "{private}");
        }
        for hostile in [
            "https://api.github.com/x?y=1",
            "https://api.github.com/#frag",
        ] {
            assert!(git_host_api_url(hostile, true)
                .unwrap_err()
                .contains("query or fragment"));
        }
    }

    #[test]
    fn api_urls_are_http_with_a_host_and_no_credentials() {
        assert!(api_url("https://api.github.com").is_ok());
        assert!(api_url("http://127.0.0.1:3000/api/v1").is_ok());
        for bad in [
            "ftp://x",
            "https://",
            "https://u:p@host",
            "https://host/a b",
            "api.github.com",
        ] {
            assert!(api_url(bad).is_err(), "{bad}");
        }
    }
}
