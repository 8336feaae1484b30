//! A saved image as an OCI image layout that Docker loads too, as Docker 25
//! and later write it: the blobs under `blobs/sha256/<digest>`, `oci-layout`
//! and `index.json` for OCI tools, and Docker's `manifest.json` naming the
//! same blobs. Docker before 25 saves its own format only; an archive that
//! already is a layout is kept as it is.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek};
use std::path::Path;

use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The largest JSON file of a saved image read into memory.
const JSON_LIMIT: u64 = 16 << 20;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    #[serde(default)]
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct ImageConfig {
    rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

fn invalid(why: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why.into())
}

/// What a first read of the archive finds: its small files, and where each
/// layer's bytes are.
#[derive(Default)]
struct Listing {
    json: HashMap<String, Vec<u8>>,
    /// A layer's path → its size, or the layer it links to.
    layers: HashMap<String, Result<u64, String>>,
    is_layout: bool,
}

fn list(archive: &mut File) -> std::io::Result<Listing> {
    let mut listing = Listing::default();
    let mut tar = tar::Archive::new(archive);
    for entry in tar.entries_with_seek()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        if path == "oci-layout" {
            listing.is_layout = true;
        } else if path.ends_with("/layer.tar") {
            let place = match entry.link_name()? {
                Some(target) if entry.header().entry_type().is_symlink() => {
                    // `../<id>/layer.tar`, relative to the link's folder.
                    let folder = Path::new(&path).parent().unwrap_or(Path::new(""));
                    Err(normalize(&folder.join(target)))
                }
                _ => Ok(entry.size()),
            };
            listing.layers.insert(path, place);
        } else if path.ends_with(".json") && entry.size() <= JSON_LIMIT {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes)?;
            listing.json.insert(path, bytes);
        }
    }
    Ok(listing)
}

/// `a/../b/layer.tar` → `b/layer.tar`.
fn normalize(path: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                parts.pop();
            }
            std::path::Component::Normal(name) => parts.push(name.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    parts.join("/")
}

/// Rewrites the archive Docker saved at `saved` as an OCI image layout at
/// `out` (which Docker loads as well).
pub fn to_layout(saved: &Path, out: &Path) -> std::io::Result<()> {
    let mut archive = File::open(saved)?;
    let listing = list(&mut archive)?;
    if listing.is_layout {
        std::fs::copy(saved, out)?;
        return Ok(());
    }
    let manifests: Vec<DockerManifest> = serde_json::from_slice(
        listing
            .json
            .get("manifest.json")
            .ok_or_else(|| invalid("the saved image has no manifest.json"))?,
    )
    .map_err(|e| invalid(format!("manifest.json: {e}")))?;
    let [manifest] = manifests.as_slice() else {
        return Err(invalid("the saved archive holds more than one image"));
    };
    let config = listing
        .json
        .get(&manifest.config)
        .ok_or_else(|| invalid(format!("the saved image has no {}", manifest.config)))?;
    let image: ImageConfig =
        serde_json::from_slice(config).map_err(|e| invalid(format!("image config: {e}")))?;
    if image.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(invalid(
            "the image config and manifest.json count different layers",
        ));
    }
    // Each layer's blob is its uncompressed tar, named by the diff id Docker
    // checks again when it loads it.
    let mut blob_of: HashMap<String, String> = HashMap::new();
    let mut layers = Vec::new();
    for (path, diff_id) in manifest.layers.iter().zip(&image.rootfs.diff_ids) {
        let hex = diff_id
            .strip_prefix("sha256:")
            .filter(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| invalid(format!("layer digest {diff_id:?}")))?;
        let mut source = path.clone();
        let size = loop {
            match listing.layers.get(&source) {
                Some(Ok(size)) => break *size,
                Some(Err(target)) if *target != source => source = target.clone(),
                _ => return Err(invalid(format!("the saved image lacks layer {path}"))),
            }
        };
        blob_of.insert(source, hex.to_owned());
        layers.push(json!({"mediaType": LAYER_MEDIA_TYPE, "digest": diff_id, "size": size}));
    }
    let config_digest = hex::encode(Sha256::digest(config));
    let oci_manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": format!("sha256:{config_digest}"), "size": config.len()},
        "layers": layers,
    }))?;
    let manifest_digest = hex::encode(Sha256::digest(&oci_manifest));
    let annotations = manifest.repo_tags.first().map(|name| {
        let tag = name.rsplit_once(':').map_or("latest", |(_, tag)| tag);
        json!({"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag})
    });
    let mut descriptor = json!({
        "mediaType": MANIFEST_MEDIA_TYPE,
        "digest": format!("sha256:{manifest_digest}"),
        "size": oci_manifest.len(),
    });
    if let Some(annotations) = annotations {
        descriptor["annotations"] = annotations;
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [descriptor],
    }))?;
    let docker_manifest = serde_json::to_vec(&json!([{
        "Config": format!("blobs/sha256/{config_digest}"),
        "RepoTags": manifest.repo_tags,
        "Layers": image.rootfs.diff_ids.iter()
            .map(|id| format!("blobs/sha256/{}", id.trim_start_matches("sha256:")))
            .collect::<Vec<_>>(),
    }]))?;

    let mut writer = tar::Builder::new(std::io::BufWriter::new(File::create(out)?));
    let small = |writer: &mut tar::Builder<_>, path: &str, bytes: &[u8]| -> std::io::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        writer.append_data(&mut header, path, bytes)
    };
    small(
        &mut writer,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    small(
        &mut writer,
        &format!("blobs/sha256/{config_digest}"),
        config,
    )?;
    small(
        &mut writer,
        &format!("blobs/sha256/{manifest_digest}"),
        &oci_manifest,
    )?;
    archive.rewind()?;
    let mut tar = tar::Archive::new(&mut archive);
    let mut written = std::collections::HashSet::new();
    for entry in tar.entries_with_seek()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let Some(hex) = blob_of.get(&path) else {
            continue;
        };
        if !written.insert(hex.clone()) {
            continue;
        }
        let mut header = tar::Header::new_gnu();
        header.set_size(entry.size());
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        writer.append_data(&mut header, format!("blobs/sha256/{hex}"), &mut entry)?;
    }
    if written.len()
        != blob_of
            .values()
            .collect::<std::collections::HashSet<_>>()
            .len()
    {
        return Err(invalid("a layer of the saved image was not found again"));
    }
    small(&mut writer, "index.json", &index)?;
    small(&mut writer, "manifest.json", &docker_manifest)?;
    writer
        .into_inner()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    Ok(())
}

/// The sha256 of a file and its size.
pub fn digest_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut file, &mut hasher)?;
    Ok((size, hex::encode(hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(builder: &mut tar::Builder<Vec<u8>>, path: &str, bytes: &[u8]) {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, path, bytes).unwrap();
    }

    /// A save as Docker 20.10 writes one: two layers, the second a link to
    /// the first (the same content).
    fn docker_save() -> Vec<u8> {
        let layer = {
            let mut inner = tar::Builder::new(Vec::new());
            add(&mut inner, "app/server.js", b"listen()\n");
            inner.into_inner().unwrap()
        };
        let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&layer)));
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [diff_id, diff_id]},
        }))
        .unwrap();
        let config_name = format!("{}.json", hex::encode(Sha256::digest(&config)));
        let mut outer = tar::Builder::new(Vec::new());
        add(&mut outer, "aaa/VERSION", b"1.0");
        add(&mut outer, "aaa/layer.tar", &layer);
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        outer
            .append_link(&mut link, "bbb/layer.tar", "../aaa/layer.tar")
            .unwrap();
        add(&mut outer, &config_name, &config);
        let manifest = json!([{"Config": config_name, "RepoTags": ["kiln-release-backend:job_1"], "Layers": ["aaa/layer.tar", "bbb/layer.tar"]}]);
        add(&mut outer, "manifest.json", manifest.to_string().as_bytes());
        outer.into_inner().unwrap()
    }

    #[test]
    fn a_docker_save_becomes_a_layout_whose_blobs_are_named_by_their_digests() {
        let dir = tempfile::tempdir().unwrap();
        let (saved, out) = (dir.path().join("saved.tar"), dir.path().join("oci.tar"));
        std::fs::write(&saved, docker_save()).unwrap();
        to_layout(&saved, &out).unwrap();
        let mut files: HashMap<String, Vec<u8>> = HashMap::new();
        let mut tar = tar::Archive::new(File::open(&out).unwrap());
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            assert!(files.insert(path, bytes).is_none(), "a file written twice");
        }
        assert_eq!(files["oci-layout"], br#"{"imageLayoutVersion":"1.0.0"}"#);
        for (path, bytes) in &files {
            if let Some(hex) = path.strip_prefix("blobs/sha256/") {
                assert_eq!(hex, hex::encode(Sha256::digest(bytes)), "{path}");
            }
        }
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
        assert_eq!(
            index["manifests"][0]["annotations"]["io.containerd.image.name"],
            "kiln-release-backend:job_1"
        );
        let manifest: serde_json::Value =
            serde_json::from_slice(&files[&format!("blobs/sha256/{}", &manifest_digest[7..])])
                .unwrap();
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 2);
        for layer in layers {
            assert!(files.contains_key(&format!(
                "blobs/sha256/{}",
                &layer["digest"].as_str().unwrap()[7..]
            )));
        }
        // Docker's own manifest names the same blobs.
        let docker: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        for path in docker[0]["Layers"].as_array().unwrap() {
            assert!(files.contains_key(path.as_str().unwrap()), "{path}");
        }
        assert!(files.contains_key(docker[0]["Config"].as_str().unwrap()));
    }

    #[test]
    fn an_archive_that_names_a_layer_it_lacks_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let saved = dir.path().join("saved.tar");
        let mut outer = tar::Builder::new(Vec::new());
        add(
            &mut outer,
            "c.json",
            br#"{"rootfs": {"diff_ids": ["sha256:0000000000000000000000000000000000000000000000000000000000000000"]}}"#,
        );
        add(
            &mut outer,
            "manifest.json",
            br#"[{"Config": "c.json", "Layers": ["gone/layer.tar"]}]"#,
        );
        std::fs::write(&saved, outer.into_inner().unwrap()).unwrap();
        let error = to_layout(&saved, &dir.path().join("out.tar")).unwrap_err();
        assert!(error.to_string().contains("gone/layer.tar"), "{error}");
    }
}
