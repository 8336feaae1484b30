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

    /// Every key in the bucket (its first thousand).
    pub async fn keys(&self) -> Vec<String> {
        let listing = reqwest::get(format!(
            "{}/{}?list-type=2&max-keys=1000",
            self.endpoint, self.bucket
        ))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
        listing
            .split("<Key>")
            .skip(1)
            .filter_map(|part| part.split("</Key>").next())
            .map(str::to_owned)
            .collect()
    }
}
