//! Tokens made and compared: random ones, and the sha256 that is all the
//! server keeps of them.

use sha2::{Digest, Sha256};

/// The sha256 of `data`, in hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A file's sha256 in hex, read in pieces.
pub(crate) fn sha256_file(path: &std::path::Path) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// 256 random bits in hex: agents' and sessions' tokens, upload URLs.
pub(crate) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    hex::encode(bytes)
}
