//! The git hosts, both ways: webhooks in (`hooks/`, with each host's payloads
//! read in `hooks/github.rs` and `hooks/gitlab.rs`), and commit statuses and
//! the preview's comment out to GitHub, GitLab and Gitea/Forgejo (`client.rs`),
//! sent from the outbox by a background task (`outbox.rs`) that never holds up
//! a build or a webhook.

mod client;
pub mod hooks;
pub mod outbox;

pub use client::{CommitState, Delivery, GitHostClient, StatusReport};

/// `acme/shop` from `https://github.com/acme/shop.git` (or its SSH form): the
/// repository's path on its host.
pub fn repository_path(repository_url: &str) -> Option<String> {
    let key = kiln_protocol::validate::repository_key(repository_url);
    let (_, path) = key.split_once('/')?;
    (!path.is_empty()).then(|| path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repository_path_comes_from_any_form_of_its_url() {
        for url in [
            "https://github.com/acme/shop.git",
            "git@github.com:acme/shop.git",
            "https://gitlab.example.com/acme/shop",
        ] {
            assert_eq!(repository_path(url).as_deref(), Some("acme/shop"), "{url}");
        }
        assert_eq!(
            repository_path("https://gitlab.example.com/group/sub/shop.git").as_deref(),
            Some("group/sub/shop")
        );
        assert_eq!(repository_path("https://github.com"), None);
    }
}
