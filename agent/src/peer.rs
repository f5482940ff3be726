//! `tandem.v1.AgentPeer`: the one service other agents may call, served on
//! the agent's port beside `tandem.v1.Agent`.
//!
//! [`require_agent`] admits only agent certificates
//! (`spiffe://tandem/agent/<name>`); `FetchBackup` then serves a file only
//! under a live grant ([`crate::backup::grants`]) that names exactly the
//! calling agent. Every refusal is `permission_denied` saying why (no such
//! grant, expired, another peer's) and is logged with the caller. The file
//! streams in 1 MiB chunks from the asked offset (a cut transfer resumes),
//! read by a task that ends when the client goes away.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tandem_proto::identity::{Identity, peer_identity};
use tandem_proto::pb;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::backup::grants::Grants;
use crate::service::log_refusal;

const CHUNK: usize = 1 << 20;

/// A test's cut point: with `TANDEM_TEST_FETCH_HOLD_AFTER_BYTES=<n>` in the
/// holder's environment, a fetch stops sending once it handed over `n`
/// bytes, writes `<home>/fetch-held` (the file position handed over up to)
/// and waits there (until the test kills this agent, or the client goes
/// away). Nothing else sets it.
const HOLD_ENV: &str = "TANDEM_TEST_FETCH_HOLD_AFTER_BYTES";

pub struct PeerService {
    pub agent: String,
    pub home: PathBuf,
    pub grants: Arc<Grants>,
}

/// Interceptor: the caller must present an agent's certificate.
#[allow(clippy::result_large_err)]
pub fn require_agent(req: Request<()>) -> Result<Request<()>, Status> {
    let refusal = match peer_identity(&req) {
        Ok(Identity::Agent(_)) => return Ok(req),
        Ok(other) => Status::permission_denied(format!(
            "{other} may not fetch a backup: only an agent holding a grant may"
        )),
        Err(status) => status,
    };
    log_refusal(
        &req,
        &refusal,
        "fetch refused: only agents may fetch a backup",
    );
    Err(refusal)
}

type ChunkStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::FileChunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::agent_peer_server::AgentPeer for PeerService {
    type FetchBackupStream = ChunkStream;

    #[tracing::instrument(skip_all, fields(agent = %self.agent))]
    async fn fetch_backup(
        &self,
        req: Request<pb::FetchBackupRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let caller = match peer_identity(&req) {
            Ok(Identity::Agent(name)) => name,
            _ => {
                return Err(Status::permission_denied(
                    "only an agent may fetch a backup",
                ));
            }
        };
        let grant =
            match self
                .grants
                .check(&req.get_ref().grant_id, &caller, jiff::Timestamp::now())
            {
                Ok(g) => g,
                Err(e) => {
                    let refusal = Status::permission_denied(e.to_string());
                    log_refusal(&req, &refusal, "fetch refused");
                    return Err(refusal);
                }
            };
        let offset = req.get_ref().offset;
        let mut file = open_nofollow(&grant.file).await.map_err(|e| {
            Status::failed_precondition(format!(
                "cannot open the granted backup {}: {e} (deleted by rotation since the grant?)",
                grant.file.display()
            ))
        })?;
        let len = file
            .metadata()
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .len();
        if len != grant.bytes {
            return Err(Status::failed_precondition(format!(
                "the granted backup {} changed since the grant ({} bytes then, {len} now)",
                grant.file.display(),
                grant.bytes
            )));
        }
        if offset > len {
            return Err(Status::invalid_argument(format!(
                "offset {offset} is past the end of {} ({len} bytes)",
                grant.file.display()
            )));
        }
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        info!(peer = %caller, file = %grant.file.display(), offset, bytes = len, grant = %grant.id, "sending a backup to a peer agent");
        let hold: Option<u64> = std::env::var(HOLD_ENV).ok().and_then(|v| v.parse().ok());
        let marker = self.home.join("fetch-held");
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut at = offset;
            let mut sent = 0u64;
            let mut buf = vec![0u8; CHUNK];
            loop {
                if hold.is_some_and(|h| sent >= h) {
                    warn!(at, "fetch held for a test ({HOLD_ENV})");
                    let _ = std::fs::write(&marker, at.to_string());
                    tx.closed().await;
                    return;
                }
                let n = match file.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                        return;
                    }
                };
                let chunk = pb::FileChunk {
                    offset: at,
                    data: buf[..n].to_vec(),
                };
                if tx.send(Ok(chunk)).await.is_err() {
                    warn!(peer = %caller, at, "the peer agent went away during the fetch");
                    return;
                }
                at += n as u64;
                sent += n as u64;
            }
            info!(peer = %caller, bytes = sent, "backup sent to a peer agent");
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Open `path` for reading, refusing a symlink in its last component.
async fn open_nofollow(path: &Path) -> std::io::Result<tokio::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut o, nix::libc::O_NOFOLLOW);
    let f = tokio::task::spawn_blocking({
        let path = path.to_owned();
        move || o.open(path)
    })
    .await
    .map_err(std::io::Error::other)??;
    Ok(tokio::fs::File::from_std(f))
}
