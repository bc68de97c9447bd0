//! The state machine: applies committed commands to [`ControlState`] and keeps snapshots.
//!
//! The state itself lives in memory; durability comes from the log plus snapshots. A
//! snapshot (state, last applied log id, membership) is written to `snapshot.bin` in the
//! data dir through a temporary file, fsync and rename, so a crash leaves either the old
//! or the new snapshot, never half of one. On open the latest snapshot is loaded and
//! openraft re-applies the log tail after it up to the saved commit point.
//!
//! After every applied batch the new state is published on a `watch` channel: the data
//! plane reads its local copy from there without going through Raft, and keeps routing
//! on the last state it saw when there is no leader.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Mutex};

use crate::codec;
use crate::log_store::sync_dir;
use crate::state::{apply, ControlResponse, ControlState};
use crate::{LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};

const SNAPSHOT_FILE: &str = "snapshot.bin";
const SNAPSHOT_TMP_FILE: &str = "snapshot.tmp";
const MAGIC: &[u8; 8] = b"SLSNAP\0\x01";

#[derive(Debug, thiserror::Error)]
pub enum SmStoreError {
    #[error("snapshot I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("corrupt snapshot {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// What `snapshot.bin` holds (after the magic, length and checksum).
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta,
    /// `codec`-encoded [`ControlState`]; also what is sent to followers.
    data: Vec<u8>,
}

#[derive(Debug, Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

struct SmInner {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: ControlState,
    snapshot: Option<StoredSnapshot>,
}

/// openraft's state machine and snapshot builder for [`ControlState`].
#[derive(Clone)]
pub struct SmStore {
    dir: PathBuf,
    inner: Arc<Mutex<SmInner>>,
    state_tx: Arc<watch::Sender<Arc<ControlState>>>,
}

fn io_invalid(reason: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.into())
}

/// Writes the snapshot durably: temp file, fsync, rename, fsync of the directory.
fn write_snapshot_file(dir: &Path, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
    let payload = codec::encode(&SnapshotFile {
        meta: meta.clone(),
        data: data.to_vec(),
    })?;
    let len = u64::try_from(payload.len()).map_err(|_| io_invalid("snapshot too large"))?;
    let tmp = dir.join(SNAPSHOT_TMP_FILE);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(MAGIC)?;
        f.write_all(&len.to_le_bytes())?;
        f.write_all(&crc32fast::hash(&payload).to_le_bytes())?;
        f.write_all(&payload)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
    sync_dir(dir)
}

fn read_snapshot_file(
    path: &Path,
) -> Result<Option<(SnapshotMeta, Vec<u8>, ControlState)>, SmStoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SmStoreError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let corrupt = |reason: String| SmStoreError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let header_len = MAGIC.len() + 12;
    if bytes.len() < header_len || &bytes[..MAGIC.len()] != MAGIC {
        return Err(corrupt("bad header".into()));
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&bytes[8..16]);
    let mut crc_bytes = [0u8; 4];
    crc_bytes.copy_from_slice(&bytes[16..20]);
    let payload = &bytes[header_len..];
    if u64::from_le_bytes(len_bytes) != payload.len() as u64 {
        return Err(corrupt("length mismatch".into()));
    }
    if crc32fast::hash(payload) != u32::from_le_bytes(crc_bytes) {
        return Err(corrupt("checksum mismatch".into()));
    }
    let file: SnapshotFile = codec::decode(payload).map_err(|e| corrupt(e.to_string()))?;
    let state: ControlState = codec::decode(&file.data).map_err(|e| corrupt(e.to_string()))?;
    Ok(Some((file.meta, file.data, state)))
}

impl SmStore {
    /// Opens the state machine in `dir`, loading the latest snapshot if there is one.
    /// Blocking: call it from `spawn_blocking` or before the runtime is busy.
    pub fn open(dir: &Path) -> Result<Self, SmStoreError> {
        crate::private_dir::create_private_dir(dir).map_err(|source| SmStoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let _ = std::fs::remove_file(dir.join(SNAPSHOT_TMP_FILE));
        let loaded = read_snapshot_file(&dir.join(SNAPSHOT_FILE))?;
        let inner = match loaded {
            Some((meta, data, state)) => {
                tracing::info!(last_log_id = ?meta.last_log_id, "loaded the control state snapshot");
                SmInner {
                    last_applied: meta.last_log_id,
                    membership: meta.last_membership.clone(),
                    state,
                    snapshot: Some(StoredSnapshot { meta, data }),
                }
            }
            None => SmInner {
                last_applied: None,
                membership: StoredMembership::default(),
                state: ControlState::default(),
                snapshot: None,
            },
        };
        let (state_tx, _) = watch::channel(Arc::new(inner.state.clone()));
        Ok(Self {
            dir: dir.to_path_buf(),
            inner: Arc::new(Mutex::new(inner)),
            state_tx: Arc::new(state_tx),
        })
    }

    /// The local copy of the control state, updated after every applied batch.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ControlState>> {
        self.state_tx.subscribe()
    }

    /// Writes `meta`+`data` to disk and makes it the current snapshot.
    async fn persist(
        &self,
        inner: &mut SmInner,
        meta: SnapshotMeta,
        data: Vec<u8>,
    ) -> io::Result<()> {
        let dir = self.dir.clone();
        let (meta, data) = tokio::task::spawn_blocking(move || {
            write_snapshot_file(&dir, &meta, &data).map(|()| (meta, data))
        })
        .await
        .map_err(|e| io::Error::other(format!("snapshot writer failed: {e}")))??;
        inner.snapshot = Some(StoredSnapshot { meta, data });
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SmStore {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        // Holding the lock across the write keeps snapshots (built or installed) in order;
        // it pauses apply for one small fsync.
        let mut inner = self.inner.lock().await;
        let meta = SnapshotMeta {
            last_log_id: inner.last_applied,
            last_membership: inner.membership.clone(),
        };
        let data = codec::encode(&inner.state)?;
        self.persist(&mut inner, meta.clone(), data.clone()).await?;
        tracing::info!(last_log_id = ?meta.last_log_id, bytes = data.len(), "built a control state snapshot");
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }
}

impl RaftStateMachine<TypeConfig> for SmStore {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let inner = self.inner.lock().await;
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut inner = self.inner.lock().await;
        let mut replies = Vec::new();
        let mut changed = false;
        while let Some((entry, responder)) = entries.try_next().await? {
            inner.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => ControlResponse::Ok,
                EntryPayload::Normal(cmd) => {
                    tracing::debug!(log_id = %entry.log_id, %cmd, "applying");
                    let response = apply(&mut inner.state, cmd);
                    changed |= !response.is_rejected();
                    response
                }
                EntryPayload::Membership(m) => {
                    let ids: Vec<_> = m.nodes().map(|(id, _)| *id).collect();
                    inner.state.note_members(ids);
                    inner.membership = StoredMembership::new(Some(entry.log_id), m);
                    changed = true;
                    ControlResponse::Ok
                }
            };
            if let Some(responder) = responder {
                replies.push((responder, response));
            }
        }
        // Publish before answering, so a writer that reads its local state right after
        // its write returns sees the write.
        if changed {
            self.state_tx.send_replace(Arc::new(inner.state.clone()));
        }
        drop(inner);
        for (responder, response) in replies {
            responder.send(response);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let state: ControlState = codec::decode(&snapshot)?;
        let mut inner = self.inner.lock().await;
        self.persist(&mut inner, meta.clone(), snapshot).await?;
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.state = state;
        self.state_tx.send_replace(Arc::new(inner.state.clone()));
        tracing::info!(last_log_id = ?meta.last_log_id, "installed a control state snapshot from the leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let inner = self.inner.lock().await;
        Ok(inner.snapshot.as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: s.data.clone(),
        }))
    }
}
