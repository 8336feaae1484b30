//! The S3-compatible server replicas keep logs and artifacts in during tests:
//! `moto_server` (PyPI `moto[server]`) on loopback at `KILN_TEST_S3_ENDPOINT`,
//! which `.ci/run` starts. Each test gets a bucket of its own.

pub struct TestBucket {
    pub endpoint: String,
    pub bucket: String,
}

impl TestBucket {
    /// A fresh bucket; `None` when no S3 server is configured.
    pub async fn create() -> Option<TestBucket> {
        let endpoint = std::env::var("KILN_TEST_S3_ENDPOINT").ok()?;
        let bucket = format!("kiln-e2e-{}", uuid::Uuid::new_v4().simple());
        let created = reqwest::Client::new()
            .put(format!("{endpoint}/{bucket}"))
            .send()
            .await
            .expect("the test S3 server answers");
        assert!(created.status().is_success(), "{created:?}");
        Some(TestBucket { endpoint, bucket })
    }

    /// What a `kiln-server` needs to keep its logs and artifacts here.
    pub fn server_env(&self) -> Vec<(String, String)> {
        [
            (
                "KILN_OBJECT_STORE_URL",
                format!("s3://{}/kiln", self.bucket),
            ),
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
            ("AWS_ACCESS_KEY_ID", "test".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// The same, for a control plane started in this process.
    pub fn object_store_config(&self) -> kiln_control_plane::ObjectStoreConfig {
        let option = |key: &str, value: &str| (key.to_owned(), value.to_owned());
        kiln_control_plane::ObjectStoreConfig {
            url: format!("s3://{}/kiln", self.bucket),
            options: vec![
                option("aws_endpoint", &self.endpoint),
                option("aws_allow_http", "true"),
                option("aws_access_key_id", "test"),
                option("aws_secret_access_key", "test"),
                option("aws_region", "us-east-1"),
            ],
        }
    }

    /// Every key in the bucket, a thousand per listing.
    pub async fn keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        let mut continuation: Option<String> = None;
        loop {
            let mut query = vec![
                ("list-type", "2".to_owned()),
                ("max-keys", "1000".to_owned()),
            ];
            if let Some(token) = continuation.take() {
                query.push(("continuation-token", token));
            }
            let listing = reqwest::Client::new()
                .get(format!("{}/{}", self.endpoint, self.bucket))
                .query(&query)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            keys.extend(
                listing
                    .split("<Key>")
                    .skip(1)
                    .filter_map(|part| part.split("</Key>").next())
                    .map(str::to_owned),
            );
            continuation = listing
                .split("<NextContinuationToken>")
                .nth(1)
                .and_then(|part| part.split("</NextContinuationToken>").next())
                .map(str::to_owned);
            if continuation.is_none() {
                return keys;
            }
        }
    }
}
