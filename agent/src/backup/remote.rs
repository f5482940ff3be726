//! The remote store (SPEC R1): backup files pushed to an S3-compatible
//! object store after they are kept, and fetched back for a restore
//! (`--from remote:KEY`). Built on `object_store` from `[remote] url`:
//! `s3://bucket/prefix` (options and AWS_* environment variables) or
//! `file:///path` (a directory: tests and shared filesystems use the same
//! code path).
//!
//! Keys: `<prefix>/<set>/backups/<file name>`. Uploads stream the file in
//! multipart chunks; downloads stream into `<dir>/.<name>.partial`, fsync
//! and rename, so a half-fetched file never has a backup's name.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, WriteMultipart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::RemoteConfig;

const CHUNK: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("remote.url {url:?}: {message}")]
    Config { url: String, message: String },
    #[error("remote store: {op} {key}")]
    Store {
        op: &'static str,
        key: String,
        #[source]
        source: object_store::Error,
    },
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{key:?} is not a backup key (expected <set>/backups/<kind>-<time>-<lsn>-<lsn>.tar.zst)"
    )]
    BadKey { key: String },
}

pub struct Remote {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RemoteError + 'a {
    move |source| RemoteError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

impl Remote {
    pub fn open(cfg: &RemoteConfig) -> Result<Remote, RemoteError> {
        let bad = |message: String| RemoteError::Config {
            url: cfg.url.clone(),
            message,
        };
        let url = url::Url::parse(&cfg.url).map_err(|e| bad(e.to_string()))?;
        let (store, prefix): (Arc<dyn ObjectStore>, ObjectPath) = match url.scheme() {
            "s3" => {
                let mut b =
                    object_store::aws::AmazonS3Builder::from_env().with_url(cfg.url.clone());
                for (k, v) in &cfg.options {
                    let key = k
                        .parse()
                        .map_err(|e: object_store::Error| bad(format!("option {k}: {e}")))?;
                    b = b.with_config(key, v.clone());
                }
                let store = b.build().map_err(|e| bad(e.to_string()))?;
                let prefix = ObjectPath::parse(url.path().trim_matches('/'))
                    .map_err(|e| bad(e.to_string()))?;
                (Arc::new(store), prefix)
            }
            "file" => {
                let dir = PathBuf::from(url.path());
                std::fs::create_dir_all(&dir)
                    .map_err(|e| bad(format!("cannot create {}: {e}", dir.display())))?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| bad(e.to_string()))?;
                (Arc::new(store), ObjectPath::default())
            }
            other => {
                return Err(bad(format!(
                    "scheme {other}: is not supported (s3:// or file://)"
                )));
            }
        };
        Ok(Remote { store, prefix })
    }

    /// The key of a backup file of `set`.
    pub fn backup_key(set: &str, file_name: &str) -> String {
        format!("{set}/backups/{file_name}")
    }

    fn path(&self, key: &str) -> Result<ObjectPath, RemoteError> {
        let full = if self.prefix.as_ref().is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.prefix)
        };
        ObjectPath::parse(&full).map_err(|_| RemoteError::BadKey {
            key: key.to_owned(),
        })
    }

    /// Upload the file `local` as `key`, in multipart chunks.
    pub async fn push(&self, local: &Path, key: &str) -> Result<u64, RemoteError> {
        let path = self.path(key)?;
        let store_err = |op| {
            move |source| RemoteError::Store {
                op,
                key: key.to_owned(),
                source,
            }
        };
        let upload = self
            .store
            .put_multipart(&path)
            .await
            .map_err(store_err("start the upload of"))?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, CHUNK);
        let mut f = tokio::fs::File::open(local)
            .await
            .map_err(io("open", local))?;
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        loop {
            let n = f.read(&mut buf).await.map_err(io("read", local))?;
            if n == 0 {
                break;
            }
            w.wait_for_capacity(4).await.map_err(store_err("upload"))?;
            w.write(&buf[..n]);
            total += n as u64;
        }
        w.finish()
            .await
            .map_err(store_err("finish the upload of"))?;
        Ok(total)
    }

    /// Download `key` into `dir` under its own name; returns the file.
    pub async fn fetch(&self, key: &str, dir: &Path) -> Result<PathBuf, RemoteError> {
        let name = key
            .rsplit('/')
            .next()
            .filter(|n| crate::backup::BackupName::parse(n).is_some())
            .ok_or_else(|| RemoteError::BadKey {
                key: key.to_owned(),
            })?;
        let path = self.path(key)?;
        let store_err = |op| {
            move |source| RemoteError::Store {
                op,
                key: key.to_owned(),
                source,
            }
        };
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(io("create", dir))?;
        let dst = dir.join(name);
        let partial = dir.join(format!(".{name}.partial"));
        let mut out = tokio::fs::File::create(&partial)
            .await
            .map_err(io("create", &partial))?;
        let mut stream = self
            .store
            .get(&path)
            .await
            .map_err(store_err("fetch"))?
            .into_stream();
        // Bounded by the object's size: the stream ends with it.
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(store_err("fetch"))?;
            out.write_all(&chunk).await.map_err(io("write", &partial))?;
        }
        out.sync_all().await.map_err(io("fsync", &partial))?;
        tokio::fs::rename(&partial, &dst)
            .await
            .map_err(io("rename", &dst))?;
        Ok(dst)
    }

    /// The keys under `<set>/backups/`, with their sizes.
    pub async fn list(&self, set: &str) -> Result<Vec<(String, u64)>, RemoteError> {
        let dir = self.path(&format!("{set}/backups"))?;
        let mut out = Vec::new();
        let mut s = self.store.list(Some(&dir));
        while let Some(m) = s.next().await {
            let m = m.map_err(|source| RemoteError::Store {
                op: "list",
                key: format!("{set}/backups"),
                source,
            })?;
            let full = m.location.to_string();
            let key = match self.prefix.as_ref() {
                "" => full,
                p => full
                    .strip_prefix(&format!("{p}/"))
                    .unwrap_or(&full)
                    .to_owned(),
            };
            out.push((key, m.size));
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_backup_file_goes_there_and_back() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = RemoteConfig {
            url: format!("file://{}/store", tmp.path().display()),
            options: Default::default(),
        };
        let r = Remote::open(&cfg).unwrap();
        let name = "daily-20261121T043007Z-0_1-0_2.tar.zst";
        let src = tmp.path().join(name);
        let data: Vec<u8> = (0..(CHUNK * 2 + 17)).map(|i| i as u8).collect();
        std::fs::write(&src, &data).unwrap();
        let key = Remote::backup_key("billing", name);
        assert_eq!(r.push(&src, &key).await.unwrap(), data.len() as u64);
        assert_eq!(
            r.list("billing").await.unwrap(),
            vec![(key.clone(), data.len() as u64)]
        );
        let got = r.fetch(&key, &tmp.path().join("back")).await.unwrap();
        assert_eq!(got, tmp.path().join("back").join(name));
        assert_eq!(std::fs::read(got).unwrap(), data);
        let e = r
            .fetch("billing/backups/x.txt", tmp.path())
            .await
            .unwrap_err();
        assert!(matches!(e, RemoteError::BadKey { .. }), "{e}");
        let e = Remote::open(&RemoteConfig {
            url: "ftp://x/y".into(),
            options: Default::default(),
        })
        .err()
        .unwrap();
        assert!(e.to_string().contains("not supported"), "{e}");
    }
}
