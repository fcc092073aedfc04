//! Object storage: `file://DIR` (the embedded default) or `s3://bucket/prefix` (AWS_* variables,
//! AWS_ENDPOINT_URL for an S3-compatible server, AWS_ALLOW_HTTP=true for plain HTTP).

use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};

#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    pub url: String,
}

impl Storage {
    pub fn from_url(url: &str) -> anyhow::Result<Self> {
        let (store, prefix): (Arc<dyn ObjectStore>, String) = if let Some(dir) =
            url.strip_prefix("file://")
        {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
            (
                Arc::new(LocalFileSystem::new_with_prefix(dir)?),
                String::new(),
            )
        } else if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
            if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
                b = b.with_endpoint(endpoint);
            }
            if std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v == "true" || v == "1") {
                b = b.with_allow_http(true);
            }
            (Arc::new(b.build()?), prefix.trim_matches('/').to_string())
        } else {
            anyhow::bail!("unsupported object store `{url}` (file://DIR or s3://bucket/prefix)");
        };
        Ok(Self {
            store,
            prefix,
            url: url.to_string(),
        })
    }

    fn path(&self, key: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{}/{key}", self.prefix))
        }
    }

    pub async fn put(&self, key: &str, data: Bytes) -> anyhow::Result<()> {
        self.store
            .put(&self.path(key), PutPayload::from(data))
            .await?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> anyhow::Result<Bytes> {
        Ok(self.store.get(&self.path(key)).await?.bytes().await?)
    }

    pub async fn delete(&self, key: &str) -> anyhow::Result<()> {
        self.store.delete(&self.path(key)).await?;
        Ok(())
    }

    /// Reachable: a write and a read of a small marker object.
    pub async fn ping(&self) -> bool {
        self.put(".ready", Bytes::from_static(b"ok")).await.is_ok()
            && self.get(".ready").await.is_ok()
    }
}
