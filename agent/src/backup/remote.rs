//! The remote store (SPEC R1, R7): backup files pushed to an S3-compatible
//! object store after they are kept, and fetched back for a restore
//! (`--from remote:KEY`); WAL files pushed by `archive-push --remote` and
//! fetched back before a roll-forward. Built on `object_store` from
//! `[remote] url`: `s3://bucket/prefix` (options and AWS_* environment
//! variables) or `file:///path` (a directory: the same code path).
//!
//! Keys under the url's prefix:
//! - `<set>/backups/<file name>`: a backup, uploaded in multipart chunks;
//! - `<set>/backups/<file name>.meta.json`: its description (the
//!   [`BackupMeta`] stored first in the file), written after the upload
//!   completed, so `tandemctl backups` lists remote backups without
//!   downloading them;
//! - `<set>/wal/<WAL file name>`: one WAL file. Pushing a name that is
//!   there succeeds only when the bytes are the same (as the local archive).
//!
//! Downloads stream into `.<name>.partial` beside the destination, fsync and
//! rename, so a half-fetched file never has a backup's or a segment's name.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, WriteMultipart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backup::BackupMeta;
use crate::backup::wal::{self, Pushed};
use crate::config::RemoteConfig;
use tandem_proto::model::Lsn;

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
    #[error(
        "{key} is already in the remote store with different contents; the store keeps the first. Is another server archiving into the same set's prefix?"
    )]
    WalConflict { key: String },
    #[error("{0}")]
    Wal(#[from] wal::WalError),
}

impl RemoteError {
    /// The store has no such key.
    fn is_not_found(&self) -> bool {
        matches!(
            self,
            RemoteError::Store {
                source: object_store::Error::NotFound { .. },
                ..
            }
        )
    }
}

/// A backup in the remote store, as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteBackup {
    /// The key (`--from remote:<key>`).
    pub key: String,
    pub name: crate::backup::BackupName,
    pub bytes: u64,
    /// Its description; `None` with `problem` when it could not be read.
    pub meta: Option<BackupMeta>,
    pub problem: Option<String>,
}

impl RemoteBackup {
    /// As the listing shows a file, named as `--from` takes it
    /// (`remote:<key>`).
    pub fn info(self) -> crate::backup::BackupInfo {
        let meta = self.meta.as_ref();
        crate::backup::BackupInfo {
            file: PathBuf::from(format!("remote:{}", self.key)),
            kind: self.name.kind,
            taken_at: self.name.taken_at,
            bytes: self.bytes,
            unpacked_bytes: meta.map_or(0, |m| m.unpacked_bytes),
            start_lsn: self.name.start_lsn,
            end_lsn: self.name.end_lsn,
            verified: meta.is_some_and(|m| m.verified),
            problem: self.problem,
        }
    }
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

    /// The key of a WAL file of `set`.
    pub fn wal_key(set: &str, name: &str) -> String {
        format!("{set}/wal/{name}")
    }

    /// The last part of a key: a file name.
    fn file_name(key: &str) -> &str {
        key.rsplit('/').next().unwrap_or("")
    }

    /// The backup a key names, if it names one.
    fn backup_name(key: &str) -> Option<crate::backup::BackupName> {
        crate::backup::BackupName::parse(Self::file_name(key))
    }

    fn meta_key(backup_key: &str) -> String {
        format!("{backup_key}.meta.json")
    }

    fn store_err<'a>(
        op: &'static str,
        key: &'a str,
    ) -> impl FnOnce(object_store::Error) -> RemoteError + 'a {
        move |source| RemoteError::Store {
            op,
            key: key.to_owned(),
            source,
        }
    }

    /// Upload a kept backup and then its description; returns the bytes.
    pub async fn push_backup(
        &self,
        local: &Path,
        key: &str,
        meta: &BackupMeta,
    ) -> Result<u64, RemoteError> {
        let n = self.push(local, key).await?;
        let mk = Self::meta_key(key);
        let body = serde_json::to_vec_pretty(meta).expect("a backup description serializes");
        self.store
            .put(&self.path(&mk)?, body.into())
            .await
            .map_err(Self::store_err("upload", &mk))?;
        Ok(n)
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
        let upload = self
            .store
            .put_multipart(&path)
            .await
            .map_err(Self::store_err("start the upload of", key))?;
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
            w.wait_for_capacity(4)
                .await
                .map_err(Self::store_err("upload", key))?;
            w.write(&buf[..n]);
            total += n as u64;
        }
        w.finish()
            .await
            .map_err(Self::store_err("finish the upload of", key))?;
        Ok(total)
    }

    /// Download the backup `key` into `dir` under its own name; returns the
    /// file.
    pub async fn fetch(&self, key: &str, dir: &Path) -> Result<PathBuf, RemoteError> {
        if Self::backup_name(key).is_none() {
            return Err(RemoteError::BadKey {
                key: key.to_owned(),
            });
        }
        let name = Self::file_name(key);
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(io("create", dir))?;
        let dst = dir.join(name);
        self.fetch_to(key, &dst).await?;
        Ok(dst)
    }

    /// Download `key` to the file `dst` (through `.<name>.partial`, fsynced
    /// and renamed).
    async fn fetch_to(&self, key: &str, dst: &Path) -> Result<(), RemoteError> {
        let path = self.path(key)?;
        let name = dst
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let partial = dst.with_file_name(format!(".{name}.partial"));
        let mut stream = self
            .store
            .get(&path)
            .await
            .map_err(Self::store_err("fetch", key))?
            .into_stream();
        let mut out = tokio::fs::File::create(&partial)
            .await
            .map_err(io("create", &partial))?;
        // Bounded by the object's size: the stream ends with it.
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(Self::store_err("fetch", key))?;
            out.write_all(&chunk).await.map_err(io("write", &partial))?;
        }
        out.sync_all().await.map_err(io("fsync", &partial))?;
        tokio::fs::rename(&partial, dst)
            .await
            .map_err(io("rename", dst))?;
        Ok(())
    }

    /// The keys under `dir` (relative to the url's prefix), with sizes and
    /// modification times, by key.
    async fn list_under(&self, dir: &str) -> Result<Vec<wal::WalFile>, RemoteError> {
        let at = self.path(dir)?;
        let mut out = Vec::new();
        let mut s = self.store.list(Some(&at));
        while let Some(m) = s.next().await {
            let m = m.map_err(Self::store_err("list", dir))?;
            let full = m.location.to_string();
            let key = match self.prefix.as_ref() {
                "" => full,
                p => full
                    .strip_prefix(&format!("{p}/"))
                    .unwrap_or(&full)
                    .to_owned(),
            };
            out.push(wal::WalFile {
                name: key,
                bytes: m.size,
                modified: jiff::Timestamp::from_second(m.last_modified.timestamp()).ok(),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The backups of `set`, newest first, with their descriptions.
    pub async fn describe(&self, set: &str) -> Result<Vec<RemoteBackup>, RemoteError> {
        let listed = self.list(set).await?;
        // The descriptions are small: read up to 8 at once.
        let mut out: Vec<RemoteBackup> = futures::stream::iter(listed)
            .map(|(key, bytes)| async move {
                let name = Self::backup_name(&key).expect("list keeps backup names");
                let mk = Self::meta_key(&key);
                let (meta, problem) = match self.get_bytes(&mk).await {
                    Ok(b) => match serde_json::from_slice::<BackupMeta>(&b) {
                        Ok(m) => (Some(m), None),
                        Err(e) => (None, Some(format!("{mk} is not a backup description: {e}"))),
                    },
                    Err(e) => (None, Some(format!("no description: {e}"))),
                };
                RemoteBackup {
                    key,
                    name,
                    bytes,
                    meta,
                    problem,
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        out.sort_by(|a, b| {
            b.name
                .taken_at
                .cmp(&a.name.taken_at)
                .then_with(|| a.key.cmp(&b.key))
        });
        Ok(out)
    }

    async fn get_bytes(&self, key: &str) -> Result<bytes::Bytes, RemoteError> {
        let path = self.path(key)?;
        let got = self
            .store
            .get(&path)
            .await
            .map_err(Self::store_err("fetch", key))?;
        got.bytes().await.map_err(Self::store_err("fetch", key))
    }

    /// Archive the WAL file `src` as `<set>/wal/<name>`. A name already
    /// there is fine only with the same bytes (a retried archive_command).
    pub async fn push_wal(&self, src: &Path, set: &str, name: &str) -> Result<Pushed, RemoteError> {
        let key = Self::wal_key(set, wal::checked_name(name)?);
        let data = tokio::fs::read(src).await.map_err(io("read", src))?;
        match self.get_bytes(&key).await {
            Ok(there) if there.as_ref() == data.as_slice() => return Ok(Pushed::AlreadyThere),
            Ok(_) => return Err(RemoteError::WalConflict { key }),
            Err(e) if !e.is_not_found() => return Err(e),
            Err(_) => {}
        }
        self.store
            .put(&self.path(&key)?, data.into())
            .await
            .map_err(Self::store_err("upload", &key))?;
        Ok(Pushed::Archived)
    }

    /// Fetch the WAL file `name` of `set` to `dst`; `false` when the store
    /// does not have it.
    pub async fn fetch_wal(&self, set: &str, name: &str, dst: &Path) -> Result<bool, RemoteError> {
        match self
            .fetch_to(&Self::wal_key(set, wal::checked_name(name)?), dst)
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The WAL files of `set` (`<set>/wal/`), named by file name, by name.
    pub async fn wal_files(&self, set: &str) -> Result<Vec<wal::WalFile>, RemoteError> {
        let mut listed = self.list_under(&format!("{set}/wal")).await?;
        for f in &mut listed {
            f.name = Self::file_name(&f.name).to_owned();
        }
        listed.retain(|f| wal::valid_name(&f.name));
        Ok(listed)
    }

    /// What the store's WAL of `set` holds (`archive-check --remote`).
    pub async fn wal_continuity(&self, set: &str) -> Result<wal::Continuity, RemoteError> {
        Ok(wal::continuity(self.wal_files(set).await?))
    }

    /// Delete the WAL file `name` of `set`; one already gone is fine.
    pub async fn delete_wal(&self, set: &str, name: &str) -> Result<(), RemoteError> {
        let key = Self::wal_key(set, wal::checked_name(name)?);
        match self.store.delete(&self.path(&key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Self::store_err("delete", &key)(e)),
        }
    }

    /// Fetch into the WAL archive `dir` every WAL file of `set` that a
    /// roll-forward from `start` may read and `dir` lacks: the segments from
    /// the one holding `start` on (any timeline), and the timeline history
    /// files. Returns the names fetched, in order.
    pub async fn fetch_wal_since(
        &self,
        set: &str,
        start: Lsn,
        dir: &Path,
    ) -> Result<Vec<String>, RemoteError> {
        let listed = self.wal_files(set).await?;
        let seg_bytes = wal::continuity(listed.clone()).segment_bytes;
        let first = start.0 / seg_bytes;
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(io("create", dir))?;
        let mut fetched = Vec::new();
        for f in listed {
            let name = f.name;
            let wanted = match wal::segment_number(&name, seg_bytes) {
                Some((_, segno)) => segno >= first,
                None => name.ends_with(".history"),
            };
            if !wanted || dir.join(&name).exists() {
                continue;
            }
            self.fetch_to(&Self::wal_key(set, &name), &dir.join(&name))
                .await?;
            fetched.push(name);
        }
        Ok(fetched)
    }

    /// Delete the backups of `set` (and their descriptions) that rotation
    /// no longer keeps, by the same rule as the local directory; returns
    /// their keys.
    pub async fn rotate(
        &self,
        set: &str,
        keep: &crate::backup::rotation::Retention,
    ) -> Result<Vec<String>, RemoteError> {
        let names: Vec<crate::backup::BackupName> = self
            .list(set)
            .await?
            .iter()
            .filter_map(|(k, _)| Self::backup_name(k))
            .collect();
        let mut gone = Vec::new();
        for n in crate::backup::rotation::to_delete(&names, keep) {
            let key = Self::backup_key(set, &n.file_name());
            let mk = Self::meta_key(&key);
            // The file first: a description left alone is never listed.
            for k in [&key, &mk] {
                match self.store.delete(&self.path(k)?).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(Self::store_err("delete", k)(e)),
                }
            }
            gone.push(key);
        }
        Ok(gone)
    }

    /// The backup keys under `<set>/backups/`, with their sizes.
    pub async fn list(&self, set: &str) -> Result<Vec<(String, u64)>, RemoteError> {
        let keys = self.list_under(&format!("{set}/backups")).await?;
        Ok(keys
            .into_iter()
            .filter(|f| Self::backup_name(&f.name).is_some())
            .map(|f| (f.name, f.bytes))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(unpacked_bytes: u64) -> BackupMeta {
        BackupMeta {
            format: 1,
            kind: crate::backup::BackupKind::Daily,
            taken_at: "2026-11-21T04:30:07Z".parse().unwrap(),
            start_lsn: Lsn(0x100_0028),
            end_lsn: Lsn(0x200_0000),
            set: "billing".into(),
            member: "b1".into(),
            files: 3,
            unpacked_bytes,
            verified: true,
        }
    }

    #[tokio::test]
    async fn a_backup_file_goes_there_and_back_and_is_listed_with_its_description() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = RemoteConfig {
            url: format!("file://{}/store", tmp.path().display()),
            options: Default::default(),
        };
        let r = Remote::open(&cfg).unwrap();
        let name = "daily-20261121T043007Z-0_1000028-0_2000000.tar.zst";
        let src = tmp.path().join(name);
        let data: Vec<u8> = (0..(CHUNK * 2 + 17)).map(|i| i as u8).collect();
        std::fs::write(&src, &data).unwrap();
        let key = Remote::backup_key("billing", name);
        assert_eq!(
            r.push_backup(&src, &key, &meta(999)).await.unwrap(),
            data.len() as u64
        );
        // The description is beside it but not listed as a backup.
        assert_eq!(
            r.list("billing").await.unwrap(),
            vec![(key.clone(), data.len() as u64)]
        );
        let listed = r.describe("billing").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].key, key);
        assert_eq!(listed[0].meta, Some(meta(999)));
        assert_eq!(listed[0].problem, None);
        // Rotation by the local rule: with one daily kept, an older daily
        // goes, with its description; the newest stays.
        let older = "daily-20261120T043007Z-0_1000028-0_2000000.tar.zst";
        let old_key = Remote::backup_key("billing", older);
        std::fs::write(tmp.path().join(older), b"old").unwrap();
        r.push_backup(&tmp.path().join(older), &old_key, &meta(1))
            .await
            .unwrap();
        assert_eq!(r.list("billing").await.unwrap().len(), 2);
        let keep = crate::backup::rotation::Retention {
            daily: 1,
            weekly: 1,
            monthly: 1,
        };
        assert_eq!(
            r.rotate("billing", &keep).await.unwrap(),
            vec![old_key.clone()]
        );
        assert_eq!(
            r.list("billing").await.unwrap(),
            vec![(key.clone(), data.len() as u64)]
        );
        assert!(
            !tmp.path()
                .join("store")
                .join(format!("{old_key}.meta.json"))
                .exists()
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

    #[tokio::test]
    async fn wal_is_pushed_once_and_the_files_a_roll_forward_needs_come_back() {
        let tmp = tempfile::tempdir().unwrap();
        let r = Remote::open(&RemoteConfig {
            url: format!("file://{}/store", tmp.path().display()),
            options: Default::default(),
        })
        .unwrap();
        let seg = 1u64 << 20; // 1 MiB segments (initdb --wal-segsize=1)
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let names = [
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000003",
            "00000002.history",
            "000000020000000000000003",
        ];
        for (i, n) in names.iter().enumerate() {
            let len = if n.ends_with(".history") { 40 } else { seg };
            std::fs::write(src.join(n), vec![i as u8; len as usize]).unwrap();
            assert_eq!(
                r.push_wal(&src.join(n), "billing", n).await.unwrap(),
                Pushed::Archived
            );
        }
        // A retried archive_command: the same bytes are fine, others refused.
        let again = src.join(names[0]);
        assert_eq!(
            r.push_wal(&again, "billing", names[0]).await.unwrap(),
            Pushed::AlreadyThere
        );
        std::fs::write(&again, vec![9u8; seg as usize]).unwrap();
        let e = r.push_wal(&again, "billing", names[0]).await.unwrap_err();
        assert!(matches!(e, RemoteError::WalConflict { .. }), "{e}");
        let e = r.push_wal(&again, "billing", "../x").await.unwrap_err();
        assert!(matches!(e, RemoteError::Wal(_)), "{e}");

        // A backup that starts in segment 2: segment 1 is not needed, and
        // what the archive already has is not fetched again.
        let arch = tmp.path().join("arch");
        std::fs::create_dir(&arch).unwrap();
        std::fs::write(arch.join(names[1]), vec![1u8; seg as usize]).unwrap();
        let got = r
            .fetch_wal_since("billing", Lsn(2 * seg + 40), &arch)
            .await
            .unwrap();
        assert_eq!(
            got,
            vec![
                "000000010000000000000003".to_owned(),
                "00000002.history".to_owned(),
                "000000020000000000000003".to_owned(),
            ]
        );
        assert_eq!(
            std::fs::read(arch.join(names[2])).unwrap(),
            vec![2u8; seg as usize]
        );
        assert!(!arch.join(names[0]).exists());
        assert!(
            wal::check(&arch)
                .unwrap()
                .covers_from(1, Lsn(2 * seg + 40))
                .is_ok()
        );
        let c = r.wal_continuity("billing").await.unwrap();
        assert_eq!(c.segment_bytes, seg);
        assert_eq!(c.timelines[&1].segments, 3);
        assert!(!c.has_gaps());

        let one = tmp.path().join("one");
        assert!(r.fetch_wal("billing", names[3], &one).await.unwrap());
        assert_eq!(std::fs::read(&one).unwrap(), vec![3u8; 40]);
        let none = r
            .fetch_wal("billing", "000000010000000000000009", &one)
            .await
            .unwrap();
        assert!(!none, "a missing segment is reported as missing");
    }
}
