//! The key the control plane signs provenance with: generated at first start
//! and kept in the data dir (`provenance/signing-key.pem`, PKCS#8 as `openssl
//! genpkey -algorithm ed25519` writes it), or given with `--signing-key FILE`.
//! A rotation makes a new one; the old public keys stay listed for verifying
//! (`store::provenance_keys`).

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::SigningKey;

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("cannot read the signing key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the signing key {path} is not an Ed25519 private key in PKCS#8 PEM ({why}); make one with `openssl genpkey -algorithm ed25519 -out FILE`")]
    Parse { path: PathBuf, why: String },
    #[error("cannot write the signing key {path}: {source}; check the data dir is writable by this user")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the signing key was given with --signing-key {path}; rotate it by giving a new file and restarting")]
    Given { path: PathBuf },
}

pub struct Signing {
    key: RwLock<SigningKey>,
    /// Where the key is kept and a rotation writes the next; `Err` holds the
    /// `--signing-key` file, which the server does not rewrite.
    kept_at: Result<PathBuf, PathBuf>,
    /// What `builder.id` starts with: the server's public URL.
    pub builder_base: String,
}

fn read(path: &Path) -> Result<SigningKey, SigningError> {
    let text = std::fs::read_to_string(path).map_err(|source| SigningError::Read {
        path: path.to_owned(),
        source,
    })?;
    SigningKey::from_pkcs8_pem(&text).map_err(|error| SigningError::Parse {
        path: path.to_owned(),
        why: error.to_string(),
    })
}

fn generate() -> SigningKey {
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut seed);
    SigningKey::from_bytes(&seed)
}

/// Writes `key` to `path` readable by this user alone, whole or not at all.
fn write(path: &Path, key: &SigningKey) -> Result<(), SigningError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let failed = |source| SigningError::Write {
        path: path.to_owned(),
        source,
    };
    let pem = key
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|error| failed(std::io::Error::other(error.to_string())))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(failed)?;
    let partial = path.with_extension("pem.partial");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .map_err(failed)?;
    file.write_all(pem.as_bytes()).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    std::fs::rename(&partial, path).map_err(failed)
}

impl Signing {
    /// The key in `given`, else the data dir's, made now if there is none.
    pub fn open(
        data_dir: &Path,
        given: Option<&Path>,
        builder_base: String,
    ) -> Result<Signing, SigningError> {
        let (key, kept_at) = match given {
            Some(path) => (read(path)?, Err(path.to_owned())),
            None => {
                let path = data_dir.join("provenance").join("signing-key.pem");
                let key = if path.exists() {
                    read(&path)?
                } else {
                    let key = generate();
                    write(&path, &key)?;
                    key
                };
                (key, Ok(path))
            }
        };
        Ok(Signing {
            key: RwLock::new(key),
            kept_at,
            builder_base,
        })
    }

    pub fn key(&self) -> SigningKey {
        self.key.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts a new key in place of the current one, on disk first; returns
    /// both.
    pub fn rotate(&self) -> Result<(SigningKey, SigningKey), SigningError> {
        let path = match &self.kept_at {
            Ok(path) => path,
            Err(given) => {
                return Err(SigningError::Given {
                    path: given.clone(),
                })
            }
        };
        let next = generate();
        write(path, &next)?;
        let mut key = self.key.write().unwrap_or_else(|e| e.into_inner());
        let old = std::mem::replace(&mut *key, next.clone());
        Ok((old, next))
    }

    /// A fixed key, for tests.
    #[cfg(test)]
    pub fn for_tests() -> Signing {
        Signing {
            key: RwLock::new(SigningKey::from_bytes(&[7; 32])),
            kept_at: Err(PathBuf::from("test")),
            builder_base: "http://kiln.test".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_made_once_kept_private_and_rotated_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let first = Signing::open(dir.path(), None, "http://x".into()).unwrap();
        let path = dir.path().join("provenance/signing-key.pem");
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = Signing::open(dir.path(), None, "http://x".into()).unwrap();
        assert_eq!(first.key().to_bytes(), again.key().to_bytes());
        let (old, new) = again.rotate().unwrap();
        assert_eq!(old.to_bytes(), first.key().to_bytes());
        let reopened = Signing::open(dir.path(), None, "http://x".into()).unwrap();
        assert_eq!(reopened.key().to_bytes(), new.to_bytes());
    }

    #[test]
    fn a_given_key_is_read_and_never_rewritten_and_a_bad_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        write(&path, &SigningKey::from_bytes(&[3; 32])).unwrap();
        let given = Signing::open(dir.path(), Some(&path), "http://x".into()).unwrap();
        assert_eq!(given.key().to_bytes(), [3; 32]);
        assert!(matches!(given.rotate(), Err(SigningError::Given { .. })));
        std::fs::write(&path, "not a key").unwrap();
        let error = Signing::open(dir.path(), Some(&path), "http://x".into())
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("key.pem") && error.contains("openssl genpkey"),
            "{error}"
        );
    }
}
