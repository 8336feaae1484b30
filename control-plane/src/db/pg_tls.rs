//! TLS to PostgreSQL, read from the connection URL as libpq reads it, so a URL
//! that works with `psql` works here: `sslmode` is `disable`, `prefer` (the
//! default: TLS when the server offers it), `require`, `verify-ca` or
//! `verify-full`, `sslrootcert` names the PEM file of the authorities to
//! trust (else the system's), and `sslcert` with `sslkey` a client certificate
//! for servers that ask for one. As with libpq, `prefer` and `require` without
//! `sslrootcert` encrypt without checking who answers; `verify-full` checks the
//! certificate's chain and its name. Unix sockets never use TLS.
//!
//! As libpq, files in `~/.postgresql/` stand in for options the URL leaves out:
//! `root.crt` for `sslrootcert` (then every mode checks the chain), and
//! `postgresql.crt` with `postgresql.key` for `sslcert` and `sslkey`.
//! `sslrootcert=system` asks for the system's authorities whatever is there.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("sslmode={0:?} is not one of disable, prefer, require, verify-ca, verify-full")]
    Mode(String),
    #[error("sslrootcert {path}: {reason}; give the PEM file of the certificate authority that signed the server's certificate")]
    RootCert { path: PathBuf, reason: String },
    #[error("{path}: {reason}; sslcert and sslkey name the PEM files of the client certificate and its private key")]
    ClientCert { path: PathBuf, reason: String },
    #[error("sslcert {0} has no private key: give sslkey=PATH, or put the key in {1}")]
    ClientCertPair(PathBuf, PathBuf),
    #[error("sslkey {0} has no certificate: give sslcert=PATH")]
    ClientKeyAlone(PathBuf),
    #[error("{0} is encrypted, and sslpassword is not supported; store it decrypted, readable only by the server's user (`openssl pkey -in KEY -out KEY.plain`)")]
    EncryptedKey(PathBuf),
    #[error("{0} needs the system's certificate authorities, and none could be read; give sslrootcert=PATH")]
    NoSystemRoots(&'static str),
    #[error("the TLS settings cannot be used: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{0}")]
    Url(#[from] tokio_postgres::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl Mode {
    fn parse(value: &str) -> Result<Self, TlsSetupError> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => return Err(TlsSetupError::Mode(other.to_owned())),
        })
    }
}

/// The connection settings of `url` and the TLS connector its `sslmode`,
/// `sslrootcert`, `sslcert` and `sslkey` ask for.
pub fn connection(url: &str) -> Result<(tokio_postgres::Config, MakeRustlsConnect), TlsSetupError> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    connection_from(url, home.as_deref())
}

/// `connection`, with libpq's default files looked for under `home`.
fn connection_from(
    url: &str,
    home: Option<&Path>,
) -> Result<(tokio_postgres::Config, MakeRustlsConnect), TlsSetupError> {
    let (rest, mut options) = take_tls_options(url);
    let defaults = home.map(|home| home.join(".postgresql"));
    options.fill_from(defaults.as_deref());
    let mode = options
        .mode
        .as_deref()
        .map(Mode::parse)
        .transpose()?
        .unwrap_or(Mode::Prefer);
    let mut config = tokio_postgres::Config::from_str(&rest)?;
    config.ssl_mode(match mode {
        Mode::Disable => SslMode::Disable,
        Mode::Prefer => SslMode::Prefer,
        Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
    });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = match (&options.root_cert, mode) {
        (Some(path), _) if path == Path::new("system") => Some(system_roots("sslrootcert=system")?),
        (Some(path), _) => Some(roots_from(path)?),
        (None, Mode::VerifyCa) => Some(system_roots("sslmode=verify-ca without sslrootcert")?),
        (None, Mode::VerifyFull) => Some(system_roots("sslmode=verify-full without sslrootcert")?),
        (None, _) => None,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match (roots, mode) {
        (Some(roots), Mode::VerifyFull) => builder.with_root_certificates(roots),
        (roots, _) => {
            let chain = roots
                .map(|roots| {
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                })
                .transpose()
                .map_err(|error| rustls::Error::General(error.to_string()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly { chain, provider }))
        }
    };
    let tls = match (&options.client_cert, &options.client_key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let fail = |path: &Path, reason: String| TlsSetupError::ClientCert {
                path: path.to_owned(),
                reason,
            };
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|error| fail(cert, error.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| fail(cert, error.to_string()))?;
            if std::fs::read_to_string(key).is_ok_and(|pem| pem.contains("ENCRYPTED")) {
                return Err(TlsSetupError::EncryptedKey(key.clone()));
            }
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|error| fail(key, error.to_string()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|error| fail(cert, error.to_string()))?
        }
        (Some(cert), None) => {
            return Err(TlsSetupError::ClientCertPair(
                cert.clone(),
                defaults
                    .unwrap_or_else(|| PathBuf::from("~/.postgresql"))
                    .join(DEFAULT_CLIENT_KEY),
            ))
        }
        (None, Some(key)) => return Err(TlsSetupError::ClientKeyAlone(key.clone())),
    };
    Ok((config, MakeRustlsConnect::new(tls)))
}

/// What a URL says of TLS.
#[derive(Debug, Default, PartialEq, Eq)]
struct TlsOptions {
    mode: Option<String>,
    root_cert: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
}

impl TlsOptions {
    /// Takes `key`'s value if it is one of the TLS options.
    fn take(&mut self, key: &str, value: &str) -> bool {
        let slot = match key {
            "sslmode" => {
                self.mode = Some(value.to_owned());
                return true;
            }
            "sslrootcert" => &mut self.root_cert,
            "sslcert" => &mut self.client_cert,
            "sslkey" => &mut self.client_key,
            _ => return false,
        };
        *slot = Some(PathBuf::from(value));
        true
    }
}

/// libpq's files in `~/.postgresql/`, used when the URL names none.
const DEFAULT_ROOT_CERT: &str = "root.crt";
const DEFAULT_CLIENT_CERT: &str = "postgresql.crt";
const DEFAULT_CLIENT_KEY: &str = "postgresql.key";

impl TlsOptions {
    /// Options the URL left out, from libpq's default files in `dir` (none
    /// without a home directory) where they exist; `sslcert` given alone finds
    /// its key there too.
    fn fill_from(&mut self, dir: Option<&Path>) {
        let present = |name: &str| dir.map(|dir| dir.join(name)).filter(|path| path.is_file());
        if self.root_cert.is_none() {
            self.root_cert = present(DEFAULT_ROOT_CERT);
        }
        if self.client_cert.is_none() && self.client_key.is_none() {
            self.client_cert = present(DEFAULT_CLIENT_CERT);
        }
        if self.client_cert.is_some() && self.client_key.is_none() {
            self.client_key = present(DEFAULT_CLIENT_KEY);
        }
    }
}

/// `url` without its TLS options (tokio-postgres knows only some modes, and no
/// files), and those options.
fn take_tls_options(url: &str) -> (String, TlsOptions) {
    let mut options = TlsOptions::default();
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let mut kept = url::form_urlencoded::Serializer::new(String::new());
                for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
                    if !options.take(&key, &value) {
                        kept.append_pair(&key, &value);
                    }
                }
                match kept.finish() {
                    query if query.is_empty() => base.to_owned(),
                    query => format!("{base}?{query}"),
                }
            }
        }
    } else {
        url.split_whitespace()
            .filter(|pair| match pair.split_once('=') {
                Some((key, value)) => !options.take(key.trim(), value.trim_matches('\'')),
                None => true,
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    (rest, options)
}

fn roots_from(path: &Path) -> Result<RootCertStore, TlsSetupError> {
    let fail = |reason: String| TlsSetupError::RootCert {
        path: path.to_owned(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|error| fail(error.to_string()))? {
        let cert = cert.map_err(|error| fail(error.to_string()))?;
        roots.add(cert).map_err(|error| fail(error.to_string()))?;
    }
    if roots.is_empty() {
        return Err(fail("it holds no certificate".into()));
    }
    Ok(roots)
}

fn system_roots(mode: &'static str) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if roots.is_empty() {
        return Err(TlsSetupError::NoSystemRoots(mode));
    }
    Ok(roots)
}

/// libpq's weaker checks: with `chain`, the certificate must chain to a trusted
/// authority whatever name it carries (`verify-ca`, or `require` with
/// `sslrootcert`); without, any certificate is taken (`prefer`, `require`).
/// The handshake's signatures are checked either way.
#[derive(Debug)]
struct ChainOnly {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_options_are_taken_from_both_url_forms() {
        let (rest, options) = take_tls_options(
            "postgres://kiln:pw@db:5432/kiln?sslmode=verify-full&application_name=kiln&sslrootcert=%2Fetc%2Fca.pem",
        );
        assert_eq!(
            rest,
            "postgres://kiln:pw@db:5432/kiln?application_name=kiln"
        );
        assert_eq!(
            options,
            TlsOptions {
                mode: Some("verify-full".into()),
                root_cert: Some("/etc/ca.pem".into()),
                ..TlsOptions::default()
            }
        );
        let (rest, options) = take_tls_options(
            "host=db sslmode=require user=kiln sslcert=/etc/kiln.crt sslkey='/etc/kiln.key'",
        );
        assert_eq!(rest, "host=db user=kiln");
        assert_eq!(
            options,
            TlsOptions {
                mode: Some("require".into()),
                client_cert: Some("/etc/kiln.crt".into()),
                client_key: Some("/etc/kiln.key".into()),
                ..TlsOptions::default()
            }
        );
        assert_eq!(
            take_tls_options("postgres://db/kiln?sslmode=disable").0,
            "postgres://db/kiln"
        );
    }

    /// A PostgreSQL of its own, with TLS on loopback (`.ci/postgres` with
    /// `KILN_PG_TLS_PORT`), stopped when dropped.
    struct TlsPostgres {
        url: String,
        dir: PathBuf,
    }

    fn postgres_script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/postgres")
    }

    impl TlsPostgres {
        fn start() -> Self {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let output = std::process::Command::new(postgres_script())
                .env("KILN_PG_TLS_PORT", port.to_string())
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                ".ci/postgres: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let url = String::from_utf8(output.stdout).unwrap().trim().to_owned();
            let (_, ca) = url.split_once("sslrootcert=").unwrap();
            let dir = Path::new(ca).ancestors().nth(2).unwrap().to_owned();
            Self { url, dir }
        }
    }

    impl Drop for TlsPostgres {
        fn drop(&mut self) {
            let _ = std::process::Command::new(postgres_script())
                .arg("stop")
                .arg(&self.dir)
                .status();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn session_is_encrypted(url: &str) -> Result<bool, crate::db::sql::Error> {
        crate::db::sql::Connection::connect_postgres(url)?.query_row(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            crate::db::sql::params![],
            |row| row.get(0),
        )
    }

    /// Runs in the PostgreSQL pass (`KILN_TEST_DATABASE_URL` set), which has
    /// PostgreSQL's programs and root to run them as their own user.
    #[test]
    fn connects_over_tls_as_the_url_says() {
        if std::env::var_os("KILN_TEST_DATABASE_URL").is_none() {
            return;
        }
        let server = TlsPostgres::start();
        let url = server.url.as_str();
        assert!(
            session_is_encrypted(url).unwrap(),
            "verify-full with the authority"
        );

        let without_root = url.split(" sslrootcert=").next().unwrap();
        let refused = session_is_encrypted(without_root).unwrap_err().to_string();
        assert!(
            refused.contains("invalid peer certificate: UnknownIssuer"),
            "verify-full against the system's authorities must refuse a private one: {refused}"
        );

        // The certificate names localhost and 127.0.0.1; the same server by
        // another name.
        let wrong_name = url.replacen(
            "host=127.0.0.1",
            "host=kiln-db.invalid hostaddr=127.0.0.1",
            1,
        );
        let refused = session_is_encrypted(&wrong_name).unwrap_err().to_string();
        assert!(refused.contains("not valid for name"), "{refused}");
        let chain_only = wrong_name.replace("verify-full", "verify-ca");
        assert!(
            session_is_encrypted(&chain_only).unwrap(),
            "verify-ca ignores the name"
        );

        // `kiln_cert` may sign in only with a client certificate.
        let tls_dir = server.dir.join("tls");
        let as_cert_user = url.replace("user=kiln ", "user=kiln_cert ");
        let refused = session_is_encrypted(&as_cert_user).unwrap_err().to_string();
        assert!(
            refused.contains("requires a valid client certificate"),
            "{refused}"
        );
        let with_client_cert = format!(
            "{as_cert_user} sslcert={} sslkey={}",
            tls_dir.join("client.crt").display(),
            tls_dir.join("client.key").display()
        );
        assert!(
            session_is_encrypted(&with_client_cert).unwrap(),
            "a client certificate"
        );

        let unchecked = without_root.replace("verify-full", "require");
        assert!(
            session_is_encrypted(&unchecked).unwrap(),
            "require encrypts"
        );
        let plain = without_root.replace("verify-full", "disable");
        assert!(!session_is_encrypted(&plain).unwrap(), "disable does not");
    }

    /// Whether a session made with `home` as the home directory is encrypted.
    fn encrypted_from(url: &str, home: &Path) -> Result<bool, String> {
        fn chain(error: tokio_postgres::Error) -> String {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            text
        }
        let (config, tls) = connection_from(url, Some(home)).map_err(|e| e.to_string())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (client, connection) = config.connect(tls).await.map_err(chain)?;
            tokio::spawn(connection);
            let row = client
                .query_one(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await
                .map_err(chain)?;
            Ok(row.get(0))
        })
    }

    /// As libpq: `~/.postgresql/root.crt` trusts the authority and
    /// `postgresql.crt`/`postgresql.key` sign in, when the URL names none;
    /// `sslrootcert=system` still means the system's authorities. In the
    /// PostgreSQL pass, as `connects_over_tls_as_the_url_says`.
    #[test]
    fn libpq_default_files_stand_in_for_missing_options() {
        if std::env::var_os("KILN_TEST_DATABASE_URL").is_none() {
            return;
        }
        let server = TlsPostgres::start();
        let tls_dir = server.dir.join("tls");
        let without_root = server.url.split(" sslrootcert=").next().unwrap();
        let home = tempfile::tempdir().unwrap();
        let refused = encrypted_from(without_root, home.path()).unwrap_err();
        assert!(
            refused.contains("UnknownIssuer"),
            "no root.crt yet: {refused}"
        );

        let defaults = home.path().join(".postgresql");
        std::fs::create_dir(&defaults).unwrap();
        std::fs::copy(tls_dir.join("ca.crt"), defaults.join("root.crt")).unwrap();
        assert_eq!(encrypted_from(without_root, home.path()), Ok(true));
        let system = format!("{without_root} sslrootcert=system");
        let refused = encrypted_from(&system, home.path()).unwrap_err();
        assert!(refused.contains("UnknownIssuer"), "{refused}");
        // root.crt makes `require` check the chain too: a stranger's is refused.
        let stranger = tempfile::tempdir().unwrap();
        std::fs::create_dir(stranger.path().join(".postgresql")).unwrap();
        std::fs::copy(
            tls_dir.join("client.crt"),
            stranger.path().join(".postgresql/root.crt"),
        )
        .unwrap();
        let require = without_root.replace("verify-full", "require");
        assert!(encrypted_from(&require, stranger.path()).is_err());

        let as_cert_user = without_root.replace("user=kiln ", "user=kiln_cert ");
        let refused = encrypted_from(&as_cert_user, home.path()).unwrap_err();
        assert!(
            refused.contains("requires a valid client certificate"),
            "{refused}"
        );
        std::fs::copy(tls_dir.join("client.crt"), defaults.join("postgresql.crt")).unwrap();
        let refused = encrypted_from(&as_cert_user, home.path()).unwrap_err();
        assert!(
            refused.contains("has no private key") && refused.contains("postgresql.key"),
            "{refused}"
        );
        std::fs::copy(tls_dir.join("client.key"), defaults.join("postgresql.key")).unwrap();
        assert_eq!(encrypted_from(&as_cert_user, home.path()), Ok(true));
    }

    #[test]
    fn bad_tls_options_are_named() {
        let error = |url| connection(url).err().unwrap().to_string();
        let error_of_mode = error("host=db sslmode=verify");
        assert!(
            error_of_mode.contains("sslmode=\"verify\" is not one of"),
            "{error_of_mode}"
        );
        let error_of_root = error("host=db sslmode=verify-full sslrootcert=/nonexistent/ca.pem");
        assert!(
            error_of_root.contains("sslrootcert /nonexistent/ca.pem"),
            "{error_of_root}"
        );
        let error_of_pair = error("host=db sslkey=/etc/kiln.key");
        assert!(
            error_of_pair.contains("sslkey /etc/kiln.key has no certificate"),
            "{error_of_pair}"
        );
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, "").unwrap();
        std::fs::write(
            &key,
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .unwrap();
        let error_of_encrypted = error(&format!(
            "host=db sslcert={} sslkey={}",
            cert.display(),
            key.display()
        ));
        assert!(
            error_of_encrypted.contains("is encrypted, and sslpassword is not supported"),
            "{error_of_encrypted}"
        );
    }
}
