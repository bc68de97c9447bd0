//! A node killed with SIGKILL loses nothing it acknowledged: the test re-runs itself as a
//! child process that writes until it is killed, then reopens the child's data dir.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use sluice_raft::{
    ControlCommand, ControlPlane, ControlPlaneConfig, MemRouter, NodeAddr, NodeInfo,
};

const CHILD_DIR: &str = "SLUICE_RAFT_CRASH_CHILD_DIR";
const ACKS: usize = 40;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn node(id: u64) -> NodeInfo {
    NodeInfo {
        id,
        quic_addr: format!("mem-{id}:7000"),
        http_addr: format!("mem-{id}:8080"),
        rack: "r".into(),
        labels: Default::default(),
        roles: Default::default(),
        gpus: 0,
    }
}

/// The child: a one-node cluster that writes and reports each acknowledged write.
fn child(dir: &Path) {
    runtime().block_on(async {
        let router = MemRouter::new();
        let cp = ControlPlane::open(1, dir, router.transport(1), ControlPlaneConfig::for_tests())
            .await
            .unwrap();
        router.register(1, cp.clone());
        cp.initialize([(1, NodeAddr::new("mem-1:7000"))].into())
            .await
            .unwrap();
        let mut out = std::io::stdout();
        for id in 100.. {
            cp.write(ControlCommand::AddNode(node(id))).await.unwrap();
            writeln!(out, "acked {id}").unwrap();
            out.flush().unwrap();
        }
    });
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        return child(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let mut proc = Command::new(std::env::current_exe().unwrap())
        .args([
            "acknowledged_writes_survive_kill_9",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = Vec::new();
    for line in BufReader::new(proc.stdout.take().unwrap()).lines() {
        if let Some(id) = line.unwrap().strip_prefix("acked ") {
            acked.push(id.parse::<u64>().unwrap());
            if acked.len() == ACKS {
                break;
            }
        }
    }
    // SIGKILL, while it is still writing.
    proc.kill().unwrap();
    proc.wait().unwrap();
    assert_eq!(
        acked.len(),
        ACKS,
        "the child stopped before acknowledging {ACKS} writes"
    );

    runtime().block_on(async {
        let router = MemRouter::new();
        let cp = ControlPlane::open(
            1,
            dir.path(),
            router.transport(1),
            ControlPlaneConfig::for_tests(),
        )
        .await
        .unwrap();
        router.register(1, cp.clone());
        // Recovered from disk before any election: every acknowledged write is there.
        let state = cp.state().borrow().clone();
        for id in &acked {
            assert!(state.node(*id).is_some(), "acknowledged AddNode({id}) lost");
        }
        // And the node leads and takes writes again.
        cp.write(ControlCommand::Noop).await.unwrap();
        cp.shutdown().await.unwrap();
    });
}
