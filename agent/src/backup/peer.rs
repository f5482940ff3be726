//! A backup file fetched from another member's agent (`AgentPeer.FetchBackup`)
//! under the grant the controller obtained for this agent.
//!
//! The client presents this agent's own certificate (the `[tls]` files in
//! force) and checks the holder's against the host in its address, as
//! every Tandem client does, and also that it names the holder agent
//! (`tandem_proto::tls::connect_to`). The file
//! streams into `.<name>.partial` in this agent's backup directory; a
//! partial file left by a cut transfer is continued from its length (the
//! holder starts at that offset), so a retry fetches only the rest. Complete
//! (its size the grant's), it is fsynced and renamed to its backup name, and
//! the directory fsynced. Whatever a cut left wrong is caught by the unpack,
//! which verifies every file against the backup's BLAKE3 manifest.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tandem_proto::order::PeerSource;
use tandem_proto::pb;
use tandem_proto::pb::agent_peer_client::AgentPeerClient;
use tandem_proto::propagation::traced;
use tandem_proto::tls::TlsFiles;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::BackupName;

/// A holder that sends nothing for this long has stalled.
const STALL: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("{file} on member {member}'s host is not named as a backup")]
    NotABackup { member: String, file: String },
    #[error(
        "cannot reach member {member}'s agent at {address} ({cause}); {resume}start that agent (or check its address), then run the restore again"
    )]
    Unreachable {
        member: String,
        address: String,
        cause: String,
        resume: String,
    },
    #[error("member {member}'s agent refused the fetch: {message}")]
    Refused { member: String, message: String },
    #[error(
        "the transfer from member {member}'s agent was cut at byte {at} of {bytes} ({cause}); run the restore again: it resumes there"
    )]
    Cut {
        member: String,
        at: u64,
        bytes: u64,
        cause: String,
    },
    #[error(
        "member {member}'s agent sent {got} bytes of {file}, expected {bytes} (the file changed since the grant?); run the restore again"
    )]
    Size {
        member: String,
        file: String,
        got: u64,
        bytes: u64,
    },
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the operation was cancelled")]
    Cancelled,
}

/// What a fetch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub file: PathBuf,
    /// The partial file a cut transfer left: continued from this byte.
    pub resumed_at: Option<u64>,
    /// The complete file was already here (an earlier fetch); nothing sent.
    pub already_here: bool,
}

/// Where the fetched file of `src` goes in `dir`, and its partial name.
pub fn destination(src: &PeerSource, dir: &Path) -> Result<(PathBuf, PathBuf), PeerError> {
    let name = Path::new(&src.file)
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| BackupName::parse(n).is_some())
        .ok_or_else(|| PeerError::NotABackup {
            member: src.member.clone(),
            file: src.file.clone(),
        })?;
    Ok((dir.join(name), dir.join(format!(".{name}.partial"))))
}

/// Bytes already fetched into `partial` (0 when none or when longer than
/// the file: then it starts again).
pub fn resume_offset(partial: &Path, bytes: u64) -> u64 {
    std::fs::metadata(partial)
        .map(|m| m.len())
        .ok()
        .filter(|&n| n <= bytes)
        .unwrap_or(0)
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> PeerError + 'a {
    move |source| PeerError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Fetch `src` into `dir`; `progress(bytes in the file so far)`.
pub async fn fetch(
    tls: &TlsFiles,
    src: &PeerSource,
    dir: &Path,
    progress: &(dyn Fn(u64) + Send + Sync),
    cancel: &CancellationToken,
) -> Result<Fetched, PeerError> {
    let (dst, partial) = destination(src, dir)?;
    if std::fs::metadata(&dst).is_ok_and(|m| m.len() == src.bytes) {
        progress(src.bytes);
        return Ok(Fetched {
            file: dst,
            resumed_at: None,
            already_here: true,
        });
    }
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(io("create", dir))?;
    let offset = resume_offset(&partial, src.bytes);
    let unreachable = |cause: String| PeerError::Unreachable {
        member: src.member.clone(),
        address: src.address.clone(),
        cause,
        resume: if offset > 0 {
            format!("{offset} bytes are fetched and kept; ")
        } else {
            "nothing was fetched; ".to_owned()
        },
    };
    let holder = tandem_proto::identity::Identity::Agent(src.agent.clone());
    let channel = tandem_proto::tls::connect_to(&format!("https://{}", src.address), tls, &holder)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let mut client = AgentPeerClient::new(traced(channel));
    let mut stream = client
        .fetch_backup(pb::FetchBackupRequest {
            grant_id: src.grant_id.clone(),
            offset,
        })
        .await
        .map_err(|s| match s.code() {
            tonic::Code::PermissionDenied
            | tonic::Code::NotFound
            | tonic::Code::FailedPrecondition
            | tonic::Code::Unauthenticated => PeerError::Refused {
                member: src.member.clone(),
                message: s.message().to_owned(),
            },
            _ => unreachable(s.message().to_owned()),
        })?
        .into_inner();
    let mut out = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&partial)
        .await
        .map_err(io("open", &partial))?;
    let mut at = offset;
    out.set_len(at).await.map_err(io("truncate", &partial))?;
    {
        use tokio::io::AsyncSeekExt;
        out.seek(std::io::SeekFrom::Start(at))
            .await
            .map_err(io("seek in", &partial))?;
    }
    progress(at);
    let cut = |at: u64, cause: String| PeerError::Cut {
        member: src.member.clone(),
        at,
        bytes: src.bytes,
        cause,
    };
    loop {
        // Cancel-safe: `message()` only reads the next frame; dropped, the
        // transfer stops and the partial file keeps what was written.
        let next = tokio::select! {
            _ = cancel.cancelled() => {
                let _ = out.flush().await;
                return Err(PeerError::Cancelled);
            }
            n = tokio::time::timeout(STALL, stream.message()) => n,
        };
        let chunk = match next {
            Err(_) => {
                out.flush().await.map_err(io("write", &partial))?;
                return Err(cut(at, format!("nothing came for {STALL:?}")));
            }
            Ok(Err(s)) => {
                out.flush().await.map_err(io("write", &partial))?;
                return Err(cut(at, s.message().to_owned()));
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(c))) => c,
        };
        if chunk.offset != at || at + chunk.data.len() as u64 > src.bytes {
            return Err(PeerError::Size {
                member: src.member.clone(),
                file: src.file.clone(),
                got: chunk.offset + chunk.data.len() as u64,
                bytes: src.bytes,
            });
        }
        out.write_all(&chunk.data)
            .await
            .map_err(io("write", &partial))?;
        at += chunk.data.len() as u64;
        progress(at);
    }
    if at != src.bytes {
        return Err(PeerError::Size {
            member: src.member.clone(),
            file: src.file.clone(),
            got: at,
            bytes: src.bytes,
        });
    }
    out.sync_all().await.map_err(io("fsync", &partial))?;
    drop(out);
    tokio::fs::rename(&partial, &dst)
        .await
        .map_err(io("rename into place", &dst))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync the directory", dir))?;
    Ok(Fetched {
        file: dst,
        resumed_at: (offset > 0).then_some(offset),
        already_here: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(file: &str) -> PeerSource {
        PeerSource {
            member: "db2".into(),
            agent: "db2".into(),
            address: "127.0.0.1:1".into(),
            file: file.into(),
            grant_id: "g".into(),
            bytes: 10,
            unpacked_bytes: 20,
        }
    }

    #[test]
    fn the_fetch_lands_under_the_backups_name_through_a_partial_file() {
        let name = "daily-20261121T043007Z-0_1000028-0_2000000.tar.zst";
        let (dst, partial) = destination(&src(&format!("/b/{name}")), Path::new("/mine")).unwrap();
        assert_eq!(dst, Path::new("/mine").join(name));
        assert_eq!(partial, Path::new("/mine").join(format!(".{name}.partial")));
        let e = destination(&src("/b/../../etc/passwd"), Path::new("/mine")).unwrap_err();
        assert!(matches!(e, PeerError::NotABackup { .. }), "{e}");
    }

    #[test]
    fn a_partial_file_is_resumed_from_its_length_unless_too_long() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("x.partial");
        assert_eq!(resume_offset(&p, 10), 0);
        std::fs::write(&p, b"0123").unwrap();
        assert_eq!(resume_offset(&p, 10), 4);
        assert_eq!(resume_offset(&p, 3), 0);
    }
}
