//! Durable Raft log: one append-only file of checksummed records.
//!
//! Every change (entries, vote, committed pointer, truncation, purge) is a record
//! `[len u32 LE][crc32 u32 LE][payload]` appended to `raft-log.wal`, so all writes are
//! serialized through one file, as openraft requires. Entries are fsynced before
//! openraft's append callback is called and votes before `save_vote` returns: whatever
//! Raft acknowledged survives `kill -9`. On open the file is replayed into memory; a torn
//! or corrupt tail (a write cut short by a crash) is cut off. When purges and truncations
//! leave the file mostly dead, it is rewritten (to a temporary file, fsynced, renamed
//! over the old one), so the file stays proportional to the live log.
//!
//! The live log is held in memory too: the control state's log between two snapshots
//! is small, and readers (replication tasks) then never touch the disk.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::{Entry, LogId, TypeConfig, Vote};

const WAL_FILE: &str = "raft-log.wal";
const WAL_TMP_FILE: &str = "raft-log.wal.tmp";
const LOCK_FILE: &str = "raft.lock";
/// File header: identifies the file and its layout version.
const MAGIC: &[u8; 8] = b"SLWAL\0\0\x01";
const HEADER_LEN: u64 = 8;
const RECORD_HEADER_LEN: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error("log store I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is locked by another process (or another open store in this one)")]
    Locked { path: PathBuf },
    #[error("{path} is not a Sluice Raft log (bad header)")]
    BadHeader { path: PathBuf },
    #[error("corrupt Raft log {path} at byte {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
}

/// Tuning for [`LogStore`].
#[derive(Debug, Clone)]
pub struct LogStoreOptions {
    /// Rewrite the file once dead records (purged or truncated) take more than this many
    /// bytes and more than the live ones.
    pub compact_min_dead_bytes: u64,
}

impl Default for LogStoreOptions {
    fn default() -> Self {
        Self {
            compact_min_dead_bytes: 1 << 20,
        }
    }
}

/// One record of the file. Append variants at the end only.
#[derive(Debug, Serialize, Deserialize)]
enum Record {
    Entry(Entry),
    Vote(Vote),
    Committed(Option<LogId>),
    /// Drop entries after this log id (all entries when `None`).
    TruncateAfter(Option<LogId>),
    /// Drop entries up to and including this log id.
    Purge(LogId),
}

/// The log as replayed, shared between the store and its readers.
#[derive(Debug, Default)]
struct MemLog {
    entries: BTreeMap<u64, Entry>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
}

impl MemLog {
    fn last_log_id(&self) -> Option<LogId> {
        match self.entries.last_key_value() {
            Some((_, e)) => Some(e.log_id()),
            None => self.last_purged,
        }
    }

    /// The index the next appended entry must have so that the log has no hole.
    fn next_index(&self) -> u64 {
        self.last_log_id().map_or(0, |id| id.index + 1)
    }

    fn truncate_after(&mut self, after: Option<&LogId>) {
        match after {
            Some(id) => drop(self.entries.split_off(&(id.index + 1))),
            None => self.entries.clear(),
        }
    }

    fn purge(&mut self, upto: &LogId) {
        self.entries = self.entries.split_off(&(upto.index + 1));
        if self.last_purged.as_ref().is_none_or(|p| p < upto) {
            self.last_purged = Some(*upto);
        }
    }

    /// Inserts an entry at the end. An entry at or below the current end replaces the
    /// tail from its index (openraft truncates first, but replaying the file must agree
    /// with what was done live either way). A gap is refused.
    fn push(&mut self, entry: Entry) -> Result<(), String> {
        let index = entry.index();
        let next = self.next_index();
        if self.last_log_id().is_some() && index > next {
            return Err(format!("entry {index} would leave a hole (next is {next})"));
        }
        if let Some(p) = &self.last_purged {
            if index <= p.index {
                return Err(format!(
                    "entry {index} is at or below the purged {}",
                    p.index
                ));
            }
        }
        drop(self.entries.split_off(&index));
        self.entries.insert(index, entry);
        Ok(())
    }
}

/// The file side: appends records, tracks how much of the file is still live.
#[derive(Debug)]
struct Wal {
    dir: PathBuf,
    file: File,
    len: u64,
    /// Size on disk of the record of each live entry.
    entry_bytes: BTreeMap<u64, u64>,
    /// Size of the latest vote, committed and purge records (the only live ones).
    meta_bytes: [u64; 3],
    options: LogStoreOptions,
    /// Set once a write or fsync failed: after a failed fsync the page cache cannot be
    /// trusted, so every later write is refused (openraft then stops; restart the node).
    failed: Option<String>,
    /// Holds the data dir's lock for as long as the store is open.
    _lock: File,
}

fn frame(payload: &[u8]) -> Result<Vec<u8>, io::Error> {
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "record too large"))?;
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

fn encode_record(rec: &Record) -> Result<Vec<u8>, io::Error> {
    frame(&codec::encode(rec)?)
}

/// Takes an exclusive lock on `dir` so two stores (processes) never write one log.
fn lock_dir(dir: &Path) -> Result<File, LogStoreError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| LogStoreError::Io {
            path: path.clone(),
            source,
        })?;
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a file descriptor we own and keep open; no memory is shared.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            return Err(if err.kind() == io::ErrorKind::WouldBlock {
                LogStoreError::Locked { path }
            } else {
                LogStoreError::Io { path, source: err }
            });
        }
    }
    Ok(file)
}

/// fsync a directory so that a created or renamed file in it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Wal {
    fn path(&self) -> PathBuf {
        self.dir.join(WAL_FILE)
    }

    fn live_bytes(&self) -> u64 {
        HEADER_LEN + self.meta_bytes.iter().sum::<u64>() + self.entry_bytes.values().sum::<u64>()
    }

    fn check_usable(&self) -> io::Result<()> {
        match &self.failed {
            Some(why) => Err(io::Error::other(format!(
                "Raft log unusable after an earlier failure: {why}"
            ))),
            None => Ok(()),
        }
    }

    fn write(&mut self, bytes: &[u8], sync: bool) -> io::Result<()> {
        self.check_usable()?;
        let written =
            self.file.write_all(bytes).and_then(
                |()| {
                    if sync {
                        self.file.sync_data()
                    } else {
                        Ok(())
                    }
                },
            );
        match written {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Cut a partial record off so it cannot hide later ones on replay.
                let _ = self.file.set_len(self.len);
                self.failed = Some(e.to_string());
                Err(e)
            }
        }
    }

    fn append_entries(&mut self, entries: &[Entry]) -> io::Result<()> {
        let mut buf = Vec::new();
        let mut sizes = Vec::with_capacity(entries.len());
        for e in entries {
            let rec = encode_record(&Record::Entry(e.clone()))?;
            sizes.push((e.index(), rec.len() as u64));
            buf.extend_from_slice(&rec);
        }
        self.write(&buf, true)?;
        if let Some(first) = entries.first() {
            drop(self.entry_bytes.split_off(&first.index()));
        }
        self.entry_bytes.extend(sizes);
        Ok(())
    }

    fn write_meta(&mut self, slot: usize, rec: &Record, sync: bool) -> io::Result<()> {
        let bytes = encode_record(rec)?;
        self.write(&bytes, sync)?;
        self.meta_bytes[slot] = bytes.len() as u64;
        Ok(())
    }

    /// Rewrites the file with only the live records once enough of it is dead.
    fn maybe_compact(&mut self, mem: &MemLog) -> io::Result<()> {
        let live = self.live_bytes();
        let dead = self.len.saturating_sub(live);
        if dead < self.options.compact_min_dead_bytes || dead <= live {
            return Ok(());
        }
        tracing::info!(
            dead,
            live,
            "rewriting the Raft log file without dead records"
        );
        self.rewrite(mem)
    }

    fn rewrite(&mut self, mem: &MemLog) -> io::Result<()> {
        let tmp = self.dir.join(WAL_TMP_FILE);
        let mut buf = MAGIC.to_vec();
        let mut meta_bytes = [0u64; 3];
        let push = |rec: &Record, buf: &mut Vec<u8>| -> io::Result<u64> {
            let bytes = encode_record(rec)?;
            buf.extend_from_slice(&bytes);
            Ok(bytes.len() as u64)
        };
        if let Some(v) = &mem.vote {
            meta_bytes[0] = push(&Record::Vote(*v), &mut buf)?;
        }
        if mem.committed.is_some() {
            meta_bytes[1] = push(&Record::Committed(mem.committed), &mut buf)?;
        }
        if let Some(p) = &mem.last_purged {
            meta_bytes[2] = push(&Record::Purge(*p), &mut buf)?;
        }
        let mut entry_bytes = BTreeMap::new();
        for (index, e) in &mem.entries {
            entry_bytes.insert(*index, push(&Record::Entry(e.clone()), &mut buf)?);
        }
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.path())?;
        sync_dir(&self.dir)?;
        self.file = OpenOptions::new().append(true).open(self.path())?;
        self.len = buf.len() as u64;
        self.entry_bytes = entry_bytes;
        self.meta_bytes = meta_bytes;
        Ok(())
    }
}

/// openraft's log storage on one append-only file. See the module docs.
pub struct LogStore {
    mem: Arc<RwLock<MemLog>>,
    wal: Arc<Mutex<Wal>>,
}

/// Reads the log for replication tasks; shares the in-memory copy with [`LogStore`].
#[derive(Clone)]
pub struct LogReader {
    mem: Arc<RwLock<MemLog>>,
}

fn poisoned() -> io::Error {
    io::Error::other("log store lock poisoned by a panic")
}

fn read_mem(mem: &RwLock<MemLog>) -> io::Result<RwLockReadGuard<'_, MemLog>> {
    mem.read().map_err(|_| poisoned())
}

fn write_mem(mem: &RwLock<MemLog>) -> io::Result<RwLockWriteGuard<'_, MemLog>> {
    mem.write().map_err(|_| poisoned())
}

fn lock_wal(wal: &Mutex<Wal>) -> io::Result<MutexGuard<'_, Wal>> {
    wal.lock().map_err(|_| poisoned())
}

/// Runs blocking file work off the async worker threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("log store task failed: {e}")))?
}

impl LogStore {
    /// The log file inside `dir`.
    pub fn wal_path(dir: &Path) -> PathBuf {
        dir.join(WAL_FILE)
    }

    /// Opens (or creates) the log in `dir`, replaying it and cutting off a torn tail.
    /// Blocking: call it from `spawn_blocking` or before the runtime is busy.
    pub fn open(dir: &Path, options: LogStoreOptions) -> Result<Self, LogStoreError> {
        let io_err = |source| LogStoreError::Io {
            path: dir.join(WAL_FILE),
            source,
        };
        crate::private_dir::create_private_dir(dir).map_err(io_err)?;
        let lock = lock_dir(dir)?;
        let path = dir.join(WAL_FILE);
        let _ = std::fs::remove_file(dir.join(WAL_TMP_FILE));

        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_err)?;

        if (bytes.len() as u64) < HEADER_LEN {
            // New file, or one whose creation was cut short: start it over.
            if !MAGIC.starts_with(&bytes) {
                return Err(LogStoreError::BadHeader { path });
            }
            file.set_len(0).map_err(io_err)?;
            file.seek(SeekFrom::Start(0)).map_err(io_err)?;
            file.write_all(MAGIC).map_err(io_err)?;
            file.sync_all().map_err(io_err)?;
            sync_dir(dir).map_err(io_err)?;
            bytes = MAGIC.to_vec();
        } else if &bytes[..HEADER_LEN as usize] != MAGIC {
            return Err(LogStoreError::BadHeader { path });
        }

        let mut mem = MemLog::default();
        let mut entry_bytes = BTreeMap::new();
        let mut meta_bytes = [0u64; 3];
        let mut offset = HEADER_LEN as usize;
        let mut torn = None;
        while offset < bytes.len() {
            let rest = &bytes[offset..];
            if rest.len() < RECORD_HEADER_LEN {
                torn = Some("partial record header");
                break;
            }
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
            if len > codec::MAX_ENCODED_LEN || rest.len() - RECORD_HEADER_LEN < len {
                torn = Some("partial record");
                break;
            }
            let payload = &rest[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len];
            // We never write an empty record; zeros are what a crash can leave in a
            // file extended but not yet written (and crc32 of nothing is zero).
            if len == 0 {
                torn = Some("zeroed record");
                break;
            }
            if crc32fast::hash(payload) != crc {
                torn = Some("checksum mismatch");
                break;
            }
            // A record with a good checksum that does not decode was written by another
            // format version: refuse rather than guess.
            let corrupt = |reason: String| LogStoreError::Corrupt {
                path: path.clone(),
                offset: offset as u64,
                reason,
            };
            let record: Record =
                codec::decode(payload).map_err(|e: CodecError| corrupt(e.to_string()))?;
            let size = (RECORD_HEADER_LEN + len) as u64;
            match record {
                Record::Entry(e) => {
                    let index = e.index();
                    mem.push(e).map_err(corrupt)?;
                    drop(entry_bytes.split_off(&index));
                    entry_bytes.insert(index, size);
                }
                Record::Vote(v) => {
                    mem.vote = Some(v);
                    meta_bytes[0] = size;
                }
                Record::Committed(c) => {
                    mem.committed = c;
                    meta_bytes[1] = size;
                }
                Record::TruncateAfter(after) => {
                    mem.truncate_after(after.as_ref());
                    match after {
                        Some(id) => drop(entry_bytes.split_off(&(id.index + 1))),
                        None => entry_bytes.clear(),
                    }
                }
                Record::Purge(upto) => {
                    mem.purge(&upto);
                    entry_bytes = entry_bytes.split_off(&(upto.index + 1));
                    meta_bytes[2] = size;
                }
            }
            offset += RECORD_HEADER_LEN + len;
        }
        if let Some(reason) = torn {
            tracing::warn!(
                path = %path.display(),
                offset,
                dropped_bytes = bytes.len() - offset,
                reason,
                "cutting off the torn tail of the Raft log"
            );
            file.set_len(offset as u64).map_err(io_err)?;
            file.sync_all().map_err(io_err)?;
        }
        // The committed pointer must not point past the durable log (it is written without
        // fsync and could in principle outlive entries a crash cut off).
        if let (Some(c), last) = (mem.committed, mem.last_log_id()) {
            if last.is_none_or(|l| l.index < c.index) {
                mem.committed = last;
            }
        }
        drop(file);
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err)?;
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            file,
            len: offset as u64,
            entry_bytes,
            meta_bytes,
            options,
            failed: None,
            _lock: lock,
        };
        wal.maybe_compact(&mem).map_err(io_err)?;
        tracing::info!(
            path = %path.display(),
            entries = mem.entries.len(),
            last_purged = ?mem.last_purged,
            last_log = ?mem.last_log_id(),
            "opened the Raft log"
        );
        Ok(Self {
            mem: Arc::new(RwLock::new(mem)),
            wal: Arc::new(Mutex::new(wal)),
        })
    }

    /// Size of the log file in bytes (for tests and metrics).
    pub fn file_len(&self) -> io::Result<u64> {
        Ok(lock_wal(&self.wal)?.len)
    }

    fn reader(&self) -> LogReader {
        LogReader {
            mem: self.mem.clone(),
        }
    }
}

fn range_entries<RB: RangeBounds<u64>>(mem: &MemLog, range: RB) -> Vec<Entry> {
    // BTreeMap::range panics on inverted ranges; openraft may ask for empty ones.
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end_excl = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    if start >= end_excl {
        return Vec::new();
    }
    mem.entries
        .range(start..end_excl)
        .map(|(_, e)| e.clone())
        .collect()
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(range_entries(&*read_mem(&self.mem)?, range))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(read_mem(&self.mem)?.vote)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(range_entries(&*read_mem(&self.mem)?, range))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(read_mem(&self.mem)?.vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let mem = read_mem(&self.mem)?;
        Ok(LogState {
            last_purged_log_id: mem.last_purged,
            last_log_id: mem.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let wal = self.wal.clone();
        let v = *vote;
        blocking(move || lock_wal(&wal)?.write_meta(0, &Record::Vote(v), true)).await?;
        write_mem(&self.mem)?.vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not fsynced: losing it only means re-learning the commit point from the leader,
        // and the next fsynced record makes it durable anyway. Entries up to it were
        // fsynced before openraft could call this.
        lock_wal(&self.wal)?.write_meta(1, &Record::Committed(committed), false)?;
        write_mem(&self.mem)?.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(read_mem(&self.mem)?.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(first) = entries.first() else {
            callback.io_completed(Ok(()));
            return Ok(());
        };
        // Refuse a hole before anything reaches the disk.
        {
            let mem = read_mem(&self.mem)?;
            let next = mem.next_index();
            let contiguous = entries.windows(2).all(|w| w[1].index() == w[0].index() + 1);
            if (mem.last_log_id().is_some() && first.index() > next) || !contiguous {
                let e = io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "append at {} would leave a hole (next is {next})",
                        first.index()
                    ),
                );
                callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                return Err(e);
            }
        }
        let wal = self.wal.clone();
        let result = blocking(move || {
            let r = lock_wal(&wal)?.append_entries(&entries);
            r.map(|()| entries)
        })
        .await;
        match result {
            Ok(entries) => {
                {
                    let mut mem = write_mem(&self.mem)?;
                    for e in entries {
                        mem.push(e).map_err(io::Error::other)?;
                    }
                }
                // Only now, with the entries on disk, may Raft count them as stored.
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "appending to the Raft log failed");
                callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        tracing::debug!(?last_log_id, "truncating the Raft log");
        let wal = self.wal.clone();
        let mem = self.mem.clone();
        blocking(move || {
            let mut wal = lock_wal(&wal)?;
            let bytes = encode_record(&Record::TruncateAfter(last_log_id))?;
            wal.write(&bytes, true)?;
            match &last_log_id {
                Some(id) => drop(wal.entry_bytes.split_off(&(id.index + 1))),
                None => wal.entry_bytes.clear(),
            }
            let mut mem = write_mem(&mem)?;
            mem.truncate_after(last_log_id.as_ref());
            wal.maybe_compact(&mem)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        tracing::debug!(%log_id, "purging the Raft log");
        let wal = self.wal.clone();
        let mem = self.mem.clone();
        blocking(move || {
            let mut wal = lock_wal(&wal)?;
            wal.write_meta(2, &Record::Purge(log_id), true)?;
            wal.entry_bytes = wal.entry_bytes.split_off(&(log_id.index + 1));
            let mut mem = write_mem(&mem)?;
            mem.purge(&log_id);
            wal.maybe_compact(&mem)
        })
        .await
    }
}
