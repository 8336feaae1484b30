//! Tokens made and compared: random ones, and the sha256 that is all the
//! server keeps of them.

use sha2::{Digest, Sha256};

/// The sha256 of `data`, in hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// 256 random bits in hex: agents' and sessions' tokens, upload URLs.
pub(crate) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    hex::encode(bytes)
}
