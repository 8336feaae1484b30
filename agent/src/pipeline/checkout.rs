//! Clones exactly one commit with the git CLI: `init`, `fetch <sha> --depth 1`
//! (falling back to a full fetch where the server refuses fetching by sha),
//! `checkout --detach`, then submodules.
//!
//! A repository token goes to git through `GIT_CONFIG_*` environment variables as
//! an HTTP header: never in argv (visible in `ps`), never in a file, never logged.

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

/// A repository URL without any credentials in it, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

struct Git<'a> {
    dir: &'a Path,
    token: Option<&'a str>,
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
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(token) = self.token {
            let basic =
                base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"));
            command
                .env("GIT_CONFIG_COUNT", "1")
                .env("GIT_CONFIG_KEY_0", "http.extraHeader")
                .env(
                    "GIT_CONFIG_VALUE_0",
                    format!("Authorization: Basic {basic}"),
                );
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

fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("(no output)")
        .trim()
        .to_owned()
}

pub async fn checkout(
    repo_url: &str,
    commit: &str,
    token: Option<&str>,
    dest: &Path,
    log: &LogSink,
    cancel: &CancellationToken,
) -> Result<(), CheckoutError> {
    let repo = redact_url(repo_url);
    tokio::fs::create_dir_all(dest)
        .await
        .map_err(|e| CheckoutError::Git {
            step: "init",
            detail: format!("cannot create {}: {e}", dest.display()),
        })?;
    let git = Git {
        dir: dest,
        token,
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
                repo_url,
                "+refs/heads/*:refs/remotes/origin/*",
                "+refs/tags/*:refs/tags/*",
            ])
            .await?;
        if !full.success {
            return Err(CheckoutError::FetchFailed {
                repo,
                detail: last_line(&full.stderr),
            });
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
        ],
    )
    .await?;
    if dest.join(".gitmodules").is_file() {
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
