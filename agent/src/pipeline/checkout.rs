//! Clones exactly one commit with the git CLI: `init`, `fetch <sha> --depth 1`
//! (falling back to a full fetch where the server refuses fetching by sha),
//! `checkout --detach`, then, only where the project asks, submodules.
//!
//! The URL and sha were checked (`kiln_protocol::validate`) and still come after
//! `--`: git never reads them as options. Only the https, http and ssh transports
//! run (plus `file` where the agent allows local repositories); `ext::` and other
//! helpers never do.
//!
//! A repository token goes to git through `GIT_CONFIG_*` environment variables as
//! an HTTP header bound to the repository's own URL (`http.<url>.extraHeader`), so
//! a submodule elsewhere never receives it, and with a token no redirect is
//! followed: never in argv (visible in `ps`), never in a file, never logged.

use std::path::Path;
use std::process::Stdio;

use base64::Engine;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::logs::LogSink;

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("cannot run git: {0}; install git on the build host")]
    GitMissing(std::io::Error),
    #[error("commit {commit} not found in {repo}; was it force-pushed away?")]
    CommitMissing { repo: String, commit: String },
    #[error("cannot fetch {repo}: {detail}")]
    FetchFailed { repo: String, detail: String },
    #[error("git {step} failed: {detail}")]
    Git { step: &'static str, detail: String },
    #[error("clone canceled")]
    Canceled,
}

/// Whether git's error says the server answered with a redirect.
fn redirected(stderr: &str) -> bool {
    [
        "error: 301",
        "error: 302",
        "error: 303",
        "error: 307",
        "error: 308",
        "redirect",
    ]
    .iter()
    .any(|sign| stderr.contains(sign))
}

/// A repository URL without any credentials in it, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// How to fetch: where from, with which credential, which transports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fetch<'a> {
    pub url: &'a str,
    pub commit: &'a str,
    pub token: Option<&'a str>,
    /// Allow the `file` transport (the agent's `allow_local_repositories`).
    pub allow_local: bool,
    /// Clone submodules too (the project's `submodules`).
    pub submodules: bool,
}

impl Fetch<'_> {
    /// Git settings for every command, as `GIT_CONFIG_*` variables: which
    /// transports may run, and the token bound to this repository's URL.
    fn config(&self) -> Vec<(String, String)> {
        let mut settings = vec![
            ("protocol.allow".to_owned(), "never".to_owned()),
            ("protocol.https.allow".to_owned(), "always".to_owned()),
            ("protocol.http.allow".to_owned(), "always".to_owned()),
            ("protocol.ssh.allow".to_owned(), "always".to_owned()),
        ];
        // git sends the header to wherever a redirect leads, as the new base
        // URL: with a token, no redirect is followed at all (git cannot tell
        // one to another origin from one that stays); without one, the first.
        let follow = if self.token.is_some() {
            "false"
        } else {
            "initial"
        };
        settings.push(("http.followRedirects".to_owned(), follow.to_owned()));
        if self.allow_local {
            settings.push(("protocol.file.allow".to_owned(), "always".to_owned()));
        }
        if let Some(token) = self.token {
            let basic =
                base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"));
            settings.push((
                format!("http.{}.extraHeader", self.url),
                format!("Authorization: Basic {basic}"),
            ));
        }
        settings
    }
}

struct Git<'a> {
    dir: &'a Path,
    config: Vec<(String, String)>,
    log: &'a LogSink,
    cancel: &'a CancellationToken,
}

struct GitOutput {
    success: bool,
    stderr: String,
}

impl Git<'_> {
    async fn run(&self, args: &[&str]) -> Result<GitOutput, CheckoutError> {
        let mut command = Command::new("git");
        command
            .arg("-C")
            .arg(self.dir)
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "true")
            // Nothing from the host's or the user's git config (a credential
            // helper, a URL rewrite) takes part.
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_COUNT", self.config.len().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (index, (key, value)) in self.config.iter().enumerate() {
            command
                .env(format!("GIT_CONFIG_KEY_{index}"), key)
                .env(format!("GIT_CONFIG_VALUE_{index}"), value);
        }
        let child = command.spawn().map_err(CheckoutError::GitMissing)?;
        let output = tokio::select! {
            output = child.wait_with_output() => output.map_err(CheckoutError::GitMissing)?,
            _ = self.cancel.cancelled() => return Err(CheckoutError::Canceled),
        };
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        // git's progress and errors, masked like every other log byte.
        self.log.write(&output.stderr);
        self.log.flush();
        Ok(GitOutput {
            success: output.status.success(),
            stderr,
        })
    }

    async fn must(&self, step: &'static str, args: &[&str]) -> Result<(), CheckoutError> {
        let output = self.run(args).await?;
        if output.success {
            Ok(())
        } else {
            Err(CheckoutError::Git {
                step,
                detail: last_line(&output.stderr),
            })
        }
    }
}

/// The checked-out commit's own message (at most 64 KiB, as the control plane
/// takes), or `None` when git cannot say.
pub(crate) async fn commit_message(dir: &Path) -> Option<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["log", "-1", "--format=%B", "HEAD"])
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(10), output)
        .await
        .ok()?
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let mut message = String::from_utf8_lossy(&output.stdout)
        .trim_end()
        .to_owned();
    let mut cut = message.len().min(64 << 10);
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    message.truncate(cut);
    Some(message).filter(|message| !message.is_empty())
}

fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("(no output)")
        .trim()
        .to_owned()
}

pub(crate) async fn checkout(
    fetch: Fetch<'_>,
    dest: &Path,
    log: &LogSink,
    cancel: &CancellationToken,
) -> Result<(), CheckoutError> {
    let Fetch {
        url: repo_url,
        commit,
        ..
    } = fetch;
    let repo = redact_url(repo_url);
    tokio::fs::create_dir_all(dest)
        .await
        .map_err(|e| CheckoutError::Git {
            step: "init",
            detail: format!("cannot create {}: {e}", dest.display()),
        })?;
    let git = Git {
        dir: dest,
        config: fetch.config(),
        log,
        cancel,
    };
    git.must("init", &["init", "-q"]).await?;
    let by_sha = git
        .run(&[
            "-c",
            "protocol.version=2",
            "fetch",
            "-q",
            "--no-tags",
            "--depth",
            "1",
            "--",
            repo_url,
            commit,
        ])
        .await?;
    if !by_sha.success {
        log.line("Fetching the commit by id was refused; fetching the whole repository instead.");
        let full = git
            .run(&[
                "fetch",
                "-q",
                "--no-tags",
                "--",
                repo_url,
                "+refs/heads/*:refs/remotes/origin/*",
                "+refs/tags/*:refs/tags/*",
            ])
            .await?;
        if !full.success {
            let mut detail = last_line(&full.stderr);
            if fetch.token.is_some() && redirected(&full.stderr) {
                detail.push_str("; the repository URL redirects, and with a repository token the agent follows no redirect (the token would go wherever it leads): set the project's repository_url to where the repository is now");
            }
            return Err(CheckoutError::FetchFailed { repo, detail });
        }
    }
    let present = git
        .run(&["cat-file", "-e", &format!("{commit}^{{commit}}")])
        .await?;
    if !present.success {
        return Err(CheckoutError::CommitMissing {
            repo,
            commit: commit.to_owned(),
        });
    }
    git.must(
        "checkout",
        &[
            "-c",
            "advice.detachedHead=false",
            "checkout",
            "-q",
            "--detach",
            commit,
            "--",
        ],
    )
    .await?;
    let has_submodules =
        crate::repo_fs::RepoFs::new(dest).is_ok_and(|fs| fs.is_file(Path::new(".gitmodules")));
    if has_submodules && !fetch.submodules {
        log.line("The repository has submodules; they are not cloned (the project's `submodules` setting is off).");
    }
    if has_submodules && fetch.submodules {
        git.must(
            "submodule update",
            &[
                "submodule",
                "update",
                "-q",
                "--init",
                "--recursive",
                "--depth",
                "1",
            ],
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_bound_to_the_repository_url_and_transports_are_few() {
        let fetch = Fetch {
            url: "https://git.example/acme/shop.git",
            commit: "0123",
            token: Some("s3cret"),
            allow_local: false,
            submodules: false,
        };
        let config = fetch.config();
        let header = config
            .iter()
            .find(|(key, _)| key.ends_with(".extraHeader"))
            .unwrap();
        assert_eq!(
            header.0,
            "http.https://git.example/acme/shop.git.extraHeader"
        );
        assert!(!config.iter().any(|(key, _)| key == "http.extraHeader"));
        assert!(config.contains(&("protocol.allow".to_owned(), "never".to_owned())));
        assert!(!config.iter().any(|(key, _)| key == "protocol.file.allow"));
    }

    #[test]
    fn credentials_in_urls_are_redacted() {
        assert_eq!(
            redact_url("https://user:pw@git.example/shop.git"),
            "https://***@git.example/shop.git"
        );
        assert_eq!(
            redact_url("https://git.example/shop.git"),
            "https://git.example/shop.git"
        );
        assert_eq!(
            redact_url("git@github.com:acme/shop.git"),
            "git@github.com:acme/shop.git"
        );
    }
}
