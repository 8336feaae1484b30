//! Logs and artifacts in an object store (the S3 API, through `object_store`),
//! for replicas that share no disk. The object store holds the truth; each
//! replica's data dir keeps a copy of what it has read, so the log viewer, log
//! follow and the deploy step keep reading plain files.
//!
//! Keys under the configured prefix: `logs/<job>/<stream>/<offset>-<id>` (one
//! object per acknowledged append, listed in the database's `log_chunks`) and
//! `artifacts/<deployment>/<job>/<name>`.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, PutPayload};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::ApiError;

/// `--object-store-url` and the settings beside it.
#[derive(Debug, Clone, Default)]
pub struct ObjectStoreConfig {
    /// `s3://bucket` or `s3://bucket/prefix`.
    pub url: String,
    /// `object_store`'s S3 settings (`aws_endpoint`, `aws_access_key_id`, …),
    /// over what the `AWS_*` environment says.
    pub options: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    #[error(
        "object store URL {url:?} is not valid: {reason}; use s3://bucket or s3://bucket/prefix"
    )]
    Url { url: String, reason: String },
    #[error("object store setting {key:?} is not known: {reason}")]
    Option { key: String, reason: String },
    #[error("cannot set up the object store: {0}")]
    Build(#[from] object_store::Error),
}

#[derive(Clone)]
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Objects({}, prefix {:?})", self.store, self.prefix)
    }
}

impl Objects {
    pub fn open(config: &ObjectStoreConfig) -> Result<Self, ObjectsError> {
        let url = url::Url::parse(&config.url).map_err(|e| ObjectsError::Url {
            url: config.url.clone(),
            reason: e.to_string(),
        })?;
        if url.scheme() != "s3" || url.host_str().is_none_or(str::is_empty) {
            return Err(ObjectsError::Url {
                url: config.url.clone(),
                reason: "only s3://<bucket> is supported".into(),
            });
        }
        let mut builder = AmazonS3Builder::from_env().with_url(config.url.as_str());
        for (key, value) in &config.options {
            let parsed: AmazonS3ConfigKey =
                key.parse()
                    .map_err(|e: object_store::Error| ObjectsError::Option {
                        key: key.clone(),
                        reason: e.to_string(),
                    })?;
            builder = builder.with_config(parsed, value);
        }
        let prefix = url.path().trim_matches('/').to_owned();
        Ok(Self {
            store: Arc::new(builder.build()?),
            prefix,
        })
    }

    fn path(&self, key: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.prefix))
        }
    }

    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), ApiError> {
        self.store
            .put(&self.path(key), PutPayload::from_bytes(bytes))
            .await
            .map_err(|e| unavailable(key, e))?;
        Ok(())
    }

    /// The object's bytes from `from` on; `None` when it is not there (a
    /// log chunk that a compaction replaced).
    pub async fn get_from(&self, key: &str, from: u64) -> Result<Option<Bytes>, ApiError> {
        let options = GetOptions {
            range: (from > 0).then_some(GetRange::Offset(from)),
            ..GetOptions::default()
        };
        let object = match self.store.get_opts(&self.path(key), options).await {
            Ok(object) => object,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(error) => return Err(unavailable(key, error)),
        };
        Ok(Some(object.bytes().await.map_err(|e| unavailable(key, e))?))
    }

    /// Deletes `keys` in as few requests as the store allows (S3: a thousand a
    /// request), warning of any it could not.
    pub async fn delete_all(&self, keys: &[String]) {
        use futures::StreamExt;
        let paths = futures::stream::iter(keys.iter().map(|key| Ok(self.path(key)))).boxed();
        let mut deleted = self.store.delete_stream(paths);
        while let Some(result) = deleted.next().await {
            if let Err(error) = result {
                tracing::warn!(message = "Cannot delete an unused object.", %error);
            }
        }
    }

    /// Best effort: an object nothing refers to only costs its bytes.
    pub async fn delete(&self, key: &str) {
        if let Err(error) = self.store.delete(&self.path(key)).await {
            tracing::warn!(message = "Cannot delete an unused object.", key, %error);
        }
    }

    /// Streams a file up (in parts, for big artifacts).
    pub async fn upload(&self, key: &str, file: &Path) -> Result<(), ApiError> {
        let source = tokio::fs::File::open(file).await?;
        self.upload_from(key, source).await
    }

    /// Stores the first `length` bytes of `file` as `key`.
    pub async fn upload_head(&self, key: &str, file: &Path, length: u64) -> Result<(), ApiError> {
        let source = tokio::fs::File::open(file).await?.take(length);
        self.upload_from(key, source).await
    }

    /// Keys under `prefix`, sorted.
    #[cfg(test)]
    pub async fn keys_under(&self, prefix: &str) -> Result<Vec<String>, ApiError> {
        use futures::TryStreamExt;
        let listed: Vec<_> = self
            .store
            .list(Some(&self.path(prefix)))
            .try_collect()
            .await
            .map_err(|e| unavailable(prefix, e))?;
        let own = self.path("");
        let mut keys: Vec<String> = listed
            .into_iter()
            .map(|meta| {
                let full = meta.location.to_string();
                full.strip_prefix(own.as_ref())
                    .map(|key| key.trim_start_matches('/').to_owned())
                    .unwrap_or(full)
            })
            .collect();
        keys.sort();
        Ok(keys)
    }

    async fn upload_from(
        &self,
        key: &str,
        mut source: impl tokio::io::AsyncRead + Unpin,
    ) -> Result<(), ApiError> {
        let mut upload = object_store::buffered::BufWriter::new(self.store.clone(), self.path(key));
        let copied = async {
            tokio::io::copy(&mut source, &mut upload).await?;
            upload.shutdown().await
        }
        .await;
        if let Err(error) = copied {
            let _ = upload.abort().await;
            return Err(ApiError::Unavailable(format!(
                "cannot store {key} in the object store: {error}; it is kept on this server's disk, try again"
            )));
        }
        Ok(())
    }

    /// Streams an object down to `dest` (written whole, then renamed in place).
    pub async fn download(&self, key: &str, dest: &Path) -> Result<(), ApiError> {
        use futures::StreamExt;
        let object = self
            .store
            .get(&self.path(key))
            .await
            .map_err(|e| unavailable(key, e))?;
        let dir = dest.parent().unwrap_or(Path::new("."));
        tokio::fs::create_dir_all(dir).await?;
        let partial = dir.join(format!(".{}.partial", uuid::Uuid::new_v4().simple()));
        let mut file = tokio::fs::File::create(&partial).await?;
        let mut stream = object.into_stream();
        let written = async {
            while let Some(piece) = stream.next().await {
                let piece = piece.map_err(|e| unavailable(key, e))?;
                file.write_all(&piece).await?;
            }
            file.sync_all().await?;
            tokio::fs::rename(&partial, dest).await?;
            Ok::<_, ApiError>(())
        }
        .await;
        if written.is_err() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        written
    }
}

fn unavailable(key: &str, error: object_store::Error) -> ApiError {
    ApiError::Unavailable(format!(
        "object store: {key}: {error}; check the store answers and this server's credentials"
    ))
}

/// A fresh bucket on the S3 server at `KILN_TEST_S3_ENDPOINT` (CI runs
/// `moto_server` on loopback); `None` without one, unless `KILN_REQUIRE_S3=1`.
#[cfg(test)]
pub(crate) async fn test_bucket() -> Option<Objects> {
    let Ok(endpoint) = std::env::var("KILN_TEST_S3_ENDPOINT") else {
        assert!(
            std::env::var("KILN_REQUIRE_S3").is_err(),
            "KILN_REQUIRE_S3 is set but KILN_TEST_S3_ENDPOINT is not"
        );
        return None;
    };
    let bucket = format!("kiln-test-{}", uuid::Uuid::new_v4().simple());
    let created = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .expect("the test S3 server answers");
    assert!(
        created.status().is_success(),
        "bucket not created: {created:?}"
    );
    let option = |key: &str, value: &str| (key.to_owned(), value.to_owned());
    let config = ObjectStoreConfig {
        url: format!("s3://{bucket}/kiln"),
        options: vec![
            option("aws_endpoint", &endpoint),
            option("aws_allow_http", "true"),
            option("aws_access_key_id", "test"),
            option("aws_secret_access_key", "test"),
            option("aws_region", "us-east-1"),
        ],
    };
    Some(Objects::open(&config).expect("test object store opens"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(url: &str, options: &[(&str, &str)]) -> Result<Objects, ObjectsError> {
        Objects::open(&ObjectStoreConfig {
            url: url.to_owned(),
            options: options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    }

    #[test]
    fn bad_settings_are_named_with_what_to_use() {
        for url in [
            "http://bucket",
            "s3://",
            "not a url",
            "file:///var/lib/kiln",
        ] {
            let error = open(url, &[]).unwrap_err().to_string();
            assert!(error.contains("s3://bucket"), "{url}: {error}");
        }
        let error = open("s3://bucket", &[("aws_no_such_setting", "x")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("aws_no_such_setting"), "{error}");
        let objects = open(
            "s3://bucket/some/prefix/",
            &[
                ("aws_region", "us-east-1"),
                ("aws_endpoint", "http://127.0.0.1:9"),
            ],
        )
        .unwrap();
        assert_eq!(objects.path("logs/j").as_ref(), "some/prefix/logs/j");
    }
}
