//! `kiln-server provenance verify`: a release's envelopes and the public keys
//! from files or from a server, checked here (offline once read).

use std::path::Path;

use anyhow::{bail, Context};
use kiln_protocol::provenance::{subject_of, verify_read, Artifact};

/// The bytes of a file, or of an http(s) URL fetched with `KILN_ADMIN_TOKEN`
/// when it is set.
async fn read(source: &str) -> anyhow::Result<Vec<u8>> {
    if !(source.starts_with("http://") || source.starts_with("https://")) {
        return std::fs::read(source).with_context(|| format!("cannot read {source}"));
    }
    let mut request = reqwest::Client::new().get(source);
    if let Ok(token) = std::env::var("KILN_ADMIN_TOKEN") {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot fetch {source}"))?;
    let status = response.status();
    let body = response.bytes().await?;
    if !status.is_success() {
        bail!(
            "{source} answered {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
    }
    Ok(body.to_vec())
}

/// `<origin>/api/v1/provenance/keys` of an envelopes URL.
fn keys_url(envelopes: &str) -> Option<String> {
    let url = reqwest::Url::parse(envelopes).ok()?;
    let origin = url.origin().ascii_serialization();
    Some(format!(
        "{origin}{}/provenance/keys",
        kiln_protocol::API_PREFIX
    ))
}

pub async fn run(
    envelopes: &str,
    keys: Option<&str>,
    artifact: Option<&Path>,
    subject: Option<String>,
) -> anyhow::Result<()> {
    let keys_source = match keys {
        Some(keys) => keys.to_owned(),
        None => keys_url(envelopes)
            .context("--keys is needed when the envelopes are a file (the keys from GET /api/v1/provenance/keys)")?,
    };
    let digest = match artifact {
        Some(path) => {
            let sha256 = crate::secrets::sha256_file(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Some((subject_of(path, subject), sha256))
        }
        None => None,
    };
    let lines = verify_read(
        (envelopes, &read(envelopes).await?),
        (&keys_source, &read(&keys_source).await?),
        digest
            .as_ref()
            .map(|(name, sha256)| Artifact { name, sha256 }),
    )
    .map_err(|why| anyhow::anyhow!("not verified: {why}"))?;
    for line in lines {
        println!("{line}");
    }
    Ok(())
}
