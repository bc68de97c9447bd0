//! The durable stores on their own: openraft's storage conformance suite, torn tails,
//! log file compaction, and snapshot files.

use std::io::Write;

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::{RaftLogReader, RaftSnapshotBuilder, StorageError};
use sluice_raft::log_store::{LogStore, LogStoreOptions};
use sluice_raft::sm_store::SmStore;
use sluice_raft::{ControlCommand, Entry, LogId, TypeConfig, Vote};
use tempfile::TempDir;

fn log_id(term: u64, index: u64) -> LogId {
    openraft::testing::log_id::<TypeConfig>(term, 1, index)
}

fn entry(term: u64, index: u64) -> Entry {
    Entry::new_normal(
        log_id(term, index),
        ControlCommand::SetDesiredReplicas {
            model: format!("model-{index}"),
            count: index as u32,
        },
    )
}

fn open(dir: &TempDir, options: LogStoreOptions) -> LogStore {
    LogStore::open(dir.path(), options).unwrap()
}

/// Appends and waits for the flush callback, as Raft would before acknowledging.
async fn append(store: &mut LogStore, entries: Vec<Entry>) {
    let (tx, rx) = TypeConfig::oneshot();
    store.append(entries, IOFlushed::signal(tx)).await.unwrap();
    rx.await.unwrap().unwrap();
}

async fn indexes(store: &mut LogStore) -> Vec<u64> {
    store
        .try_get_log_entries(0..u64::MAX)
        .await
        .unwrap()
        .iter()
        .map(|e| e.index())
        .collect()
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, SmStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, SmStore), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().unwrap();
        let log = LogStore::open(dir.path(), LogStoreOptions::default()).unwrap();
        let sm = SmStore::open(dir.path()).unwrap();
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_openraft_storage_suite() {
    Suite::test_all(Builder).await.unwrap();
}

#[tokio::test]
async fn acknowledged_entries_and_votes_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = open(&dir, LogStoreOptions::default());
        append(&mut s, (0..10).map(|i| entry(1, i)).collect()).await;
        s.save_vote(&Vote::new(3, 2)).await.unwrap();
        s.save_committed(Some(log_id(1, 7))).await.unwrap();
        s.truncate_after(Some(log_id(1, 8))).await.unwrap();
        append(&mut s, vec![entry(2, 9), entry(2, 10)]).await;
        // A hole is refused, not written.
        let (tx, _rx) = TypeConfig::oneshot();
        assert!(s
            .append([entry(2, 12)], IOFlushed::signal(tx))
            .await
            .is_err());
    }
    let mut s = open(&dir, LogStoreOptions::default());
    assert_eq!(indexes(&mut s).await, (0..=10).collect::<Vec<_>>());
    let e9 = s.try_get_log_entries(9..10).await.unwrap();
    assert_eq!(e9[0].log_id, log_id(2, 9));
    assert_eq!(s.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
    assert_eq!(s.read_committed().await.unwrap(), Some(log_id(1, 7)));
    let st = s.get_log_state().await.unwrap();
    assert_eq!(st.last_log_id, Some(log_id(2, 10)));
    assert_eq!(st.last_purged_log_id, None);
}

#[tokio::test]
async fn a_torn_tail_is_cut_off_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = open(&dir, LogStoreOptions::default());
        s.save_vote(&Vote::new(1, 1)).await.unwrap();
        append(&mut s, (0..5).map(|i| entry(1, i)).collect()).await;
    }
    let path = LogStore::wal_path(dir.path());
    let full = std::fs::metadata(&path).unwrap().len();

    // A crash in the middle of writing the last record.
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(full - 3).unwrap();
    drop(f);
    {
        let mut s = open(&dir, LogStoreOptions::default());
        assert_eq!(indexes(&mut s).await, vec![0, 1, 2, 3]);
        assert_eq!(s.read_vote().await.unwrap(), Some(Vote::new(1, 1)));
        // The log goes on from the cut.
        append(&mut s, vec![entry(2, 4)]).await;
    }
    // Garbage after the last record (a header that promises more than is there, then
    // a record whose checksum does not match).
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 9, 9]).unwrap();
    drop(f);
    {
        let mut s = open(&dir, LogStoreOptions::default());
        assert_eq!(indexes(&mut s).await, vec![0, 1, 2, 3, 4]);
        assert_eq!(
            s.try_get_log_entries(4..5).await.unwrap()[0].log_id,
            log_id(2, 4)
        );
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(&[3, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3]).unwrap();
    drop(f);
    let mut s = open(&dir, LogStoreOptions::default());
    assert_eq!(indexes(&mut s).await, vec![0, 1, 2, 3, 4]);
    drop(s);
    // Zeros where the file was extended but never written.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(&[0; 64]).unwrap();
    drop(f);
    let mut s = open(&dir, LogStoreOptions::default());
    assert_eq!(indexes(&mut s).await, vec![0, 1, 2, 3, 4]);

    // Cut anywhere inside the file: never a panic, always a prefix of the log.
    let len = std::fs::metadata(&path).unwrap().len();
    drop(s);
    for cut in (0..len).rev().step_by(7) {
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(cut).unwrap();
        drop(f);
        let mut s = open(&dir, LogStoreOptions::default());
        let got = indexes(&mut s).await;
        assert_eq!(
            got,
            (0..got.len() as u64).collect::<Vec<_>>(),
            "cut at {cut}"
        );
    }
}

#[tokio::test]
async fn a_foreign_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(LogStore::wal_path(dir.path()), b"definitely not a raft log").unwrap();
    assert!(LogStore::open(dir.path(), LogStoreOptions::default()).is_err());
}

#[tokio::test]
async fn purging_rewrites_the_file_once_it_is_mostly_dead() {
    let dir = tempfile::tempdir().unwrap();
    let options = LogStoreOptions {
        compact_min_dead_bytes: 512,
    };
    let mut s = open(&dir, options.clone());
    s.save_vote(&Vote::new(2, 1)).await.unwrap();
    for i in 0..100 {
        append(&mut s, vec![entry(1, i)]).await;
    }
    let before = s.file_len().unwrap();
    s.purge(log_id(1, 89)).await.unwrap();
    let after = s.file_len().unwrap();
    assert!(after < before / 4, "file {before} -> {after} bytes");
    assert_eq!(indexes(&mut s).await, (90..100).collect::<Vec<_>>());
    append(&mut s, vec![entry(1, 100)]).await;
    drop(s);

    let mut s = open(&dir, options.clone());
    assert_eq!(indexes(&mut s).await, (90..=100).collect::<Vec<_>>());
    let st = s.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id, Some(log_id(1, 89)));
    assert_eq!(s.read_vote().await.unwrap(), Some(Vote::new(2, 1)));

    // Purging past the end (after installing a snapshot) empties the log.
    s.purge(log_id(3, 500)).await.unwrap();
    drop(s);
    let mut s = open(&dir, options);
    assert!(indexes(&mut s).await.is_empty());
    let st = s.get_log_state().await.unwrap();
    assert_eq!(st.last_log_id, Some(log_id(3, 500)));
    append(&mut s, vec![entry(3, 501)]).await;
}

#[tokio::test]
async fn snapshots_are_reloaded_and_corruption_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = SmStore::open(dir.path()).unwrap();
    let mut builder = sm.get_snapshot_builder().await;
    let snap = builder.build_snapshot().await.unwrap();
    assert_eq!(snap.meta.last_log_id, None);
    drop(sm);

    let mut sm = SmStore::open(dir.path()).unwrap();
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snap.meta);
    assert_eq!(current.snapshot, snap.snapshot);
    drop(sm);

    let path = dir.path().join("snapshot.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    assert!(SmStore::open(dir.path()).is_err());

    // Snapshot bytes that do not decode are refused by install, not applied.
    std::fs::remove_file(&path).unwrap();
    let mut sm = SmStore::open(dir.path()).unwrap();
    assert!(sm
        .install_snapshot(&snap.meta, vec![1, 2, 3])
        .await
        .is_err());
}
