//! Three-node clusters on the in-memory transport: replication, forwarding, leader loss,
//! full restart, partitions, snapshots and log compaction.

mod common;

use std::time::Duration;

use common::{add_node, addr, node_info, Cluster, WAIT};
use sluice_actors::slice::{Assignment, ReplicaId};
use sluice_raft::log_store::LogStoreError;
use sluice_raft::voter_policy::{choose_voters, survives_any_rack_loss, VoterCandidate};
use sluice_raft::{
    send_to_leader, ControlCommand, ControlPlane, ControlPlaneConfig, ControlPlaneError,
    ControlResponse, RaftRpc, RaftRpcReply, Rejection, Role,
};

fn desired(model: &str, count: u32) -> ControlCommand {
    ControlCommand::SetDesiredReplicas {
        model: model.into(),
        count,
    }
}

fn followers(c: &Cluster, leader: u64) -> Vec<u64> {
    c.nodes.keys().copied().filter(|id| *id != leader).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_and_forward_writes_to_the_leader() {
    let c = Cluster::open(&[1, 2, 3], ControlPlaneConfig::for_tests()).await;
    c.form().await;
    let leader = c.leader().await;

    // Founding members are known to the id allocator, so a joiner never gets 1..=3.
    let resp = c
        .node(leader)
        .write(ControlCommand::AllocateNodeId)
        .await
        .unwrap();
    assert_eq!(resp, ControlResponse::NodeIdAllocated(4));
    assert_eq!(
        c.node(leader).write(add_node(4)).await.unwrap(),
        ControlResponse::Ok
    );

    // A write sent to a follower is forwarded and answered with the leader's response.
    let follower = followers(&c, leader)[0];
    let resp = c
        .node(follower)
        .write(ControlCommand::AllocateNodeId)
        .await
        .unwrap();
    assert_eq!(resp, ControlResponse::NodeIdAllocated(5));
    let assignment = Assignment::uniform(3, &[ReplicaId(1), ReplicaId(2)], 8, 2).unwrap();
    let set = ControlCommand::SetAssignment {
        model: "llama".into(),
        assignment: assignment.clone(),
    };
    assert_eq!(
        c.node(follower).write(set.clone()).await.unwrap(),
        ControlResponse::Ok
    );
    // A stale generation is refused by the state machine, not by Raft.
    assert_eq!(
        c.node(follower).write(set).await.unwrap(),
        ControlResponse::Rejected(Rejection::StaleGeneration {
            model: "llama".into(),
            current: 3,
            proposed: 3
        })
    );

    // Every node's state watch shows every write; the writer sees its own write at once.
    let s = c.node(follower).state().borrow().clone();
    assert_eq!(s.assignment("llama"), Some(&assignment));
    for id in [1, 2, 3] {
        let s = c
            .wait_state(id, "assignment and node 4", |s| {
                s.assignment("llama").is_some() && s.node(4).is_some()
            })
            .await;
        assert_eq!(s.next_node_id(), 6);
    }
    c.converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialize_is_refused_twice_and_data_dirs_keep_their_node_id() {
    let mut c = Cluster::open(&[1], ControlPlaneConfig::for_tests()).await;
    c.form().await;
    let again = c.node(1).initialize([(1, common::addr(1))].into()).await;
    assert!(
        matches!(again, Err(ControlPlaneError::AlreadyInitialized)),
        "{again:?}"
    );
    // An open data dir is locked against a second user.
    let dir = c.dirs[&1].path().to_path_buf();
    let twice = ControlPlane::open(1, &dir, c.router.transport(1), c.config.clone()).await;
    assert!(
        matches!(
            twice,
            Err(ControlPlaneError::LogStore(LogStoreError::Locked { .. }))
        ),
        "{:?}",
        twice.err()
    );

    c.kill(1).await;
    let dir = c.dirs[&1].path().to_path_buf();
    let other = ControlPlane::open(2, &dir, c.router.transport(2), c.config.clone()).await;
    assert!(matches!(
        other,
        Err(ControlPlaneError::NodeIdMismatch { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_leader_elects_a_new_one_that_takes_writes() {
    let mut c = Cluster::open(&[1, 2, 3], ControlPlaneConfig::for_tests()).await;
    c.form().await;
    let old = c.leader().await;
    c.node(old).write(desired("m", 2)).await.unwrap();
    c.converged().await;

    c.kill(old).await;
    let new = c.leader().await;
    assert_ne!(new, old);
    let survivor = followers(&c, new)[0];
    // Written through the survivor that is not the leader: forwarded.
    assert_eq!(
        c.node(survivor).write(desired("m", 5)).await.unwrap(),
        ControlResponse::Ok
    );
    let s = c.converged().await;
    assert_eq!(s.desired_replicas().get("m"), Some(&5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_restart_keeps_every_committed_entry() {
    let mut c = Cluster::open(&[1, 2, 3], ControlPlaneConfig::for_tests()).await;
    c.form().await;
    for i in 0..20u64 {
        let node = c.nodes.keys().copied().nth((i % 3) as usize).unwrap();
        c.node(node).write(add_node(10 + i)).await.unwrap();
    }
    let before = c.converged().await;
    c.shutdown_all().await;

    // Reopen one by one: each recovers its committed state from disk with no peers up.
    for id in [1, 2, 3] {
        c.start(id).await;
        let s = c.node(id).state().borrow().clone();
        assert_eq!(*s, *before, "node {id} lost committed state");
    }
    // The cluster elects again and takes writes.
    let leader = c.leader().await;
    c.node(leader).write(add_node(99)).await.unwrap();
    let after = c.converged().await;
    assert_eq!(after.nodes().len(), before.nodes().len() + 1);
    c.node(leader).wait_for_recovery(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_cannot_commit_and_the_majority_can() {
    let config = ControlPlaneConfig {
        write_timeout: Duration::from_millis(1500),
        ..ControlPlaneConfig::for_tests()
    };
    let c = Cluster::open(&[1, 2, 3], config).await;
    c.form().await;
    let old = c.leader().await;
    c.node(old).write(desired("m", 1)).await.unwrap();
    c.converged().await;

    // Cut the leader off alone.
    let majority = followers(&c, old);
    c.router.partition(&[&[old], &majority]);
    let lost = c.node(old).write(add_node(77)).await;
    assert!(
        matches!(lost, Err(ControlPlaneError::Indeterminate(_))),
        "minority write: {lost:?}"
    );

    // The majority elects a leader of its own and commits.
    let new = {
        let start = std::time::Instant::now();
        loop {
            let m = c.node(majority[0]).metrics();
            if let Some(l) = m.leader.filter(|l| majority.contains(l)) {
                if c.node(l).metrics().role == Role::Leader {
                    break l;
                }
            }
            assert!(start.elapsed() < WAIT, "majority elected nobody");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    assert_eq!(
        c.node(new).write(desired("m", 2)).await.unwrap(),
        ControlResponse::Ok
    );
    // A follower of the majority forwards to the new leader.
    let other = majority.iter().copied().find(|id| *id != new).unwrap();
    assert_eq!(
        c.node(other).write(desired("m", 3)).await.unwrap(),
        ControlResponse::Ok
    );
    // The cut-off node kept its last state and still cannot write.
    assert_eq!(
        c.node(old).state().borrow().desired_replicas().get("m"),
        Some(&1)
    );
    assert!(c.node(old).write(desired("m", 9)).await.is_err());

    // After healing, the old leader follows, and its uncommitted writes are gone.
    c.router.heal();
    let s = c.converged().await;
    assert_eq!(s.desired_replicas().get("m"), Some(&3));
    assert!(s.node(77).is_none(), "an entry never committed was applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_follower_reports_no_leader_and_keeps_its_state() {
    let config = ControlPlaneConfig {
        write_timeout: Duration::from_millis(1000),
        ..ControlPlaneConfig::for_tests()
    };
    let c = Cluster::open(&[1, 2, 3], config).await;
    c.form().await;
    let leader = c.leader().await;
    c.node(leader).write(desired("m", 4)).await.unwrap();
    c.converged().await;
    let lonely = followers(&c, leader)[0];
    let rest: Vec<u64> = c.nodes.keys().copied().filter(|id| *id != lonely).collect();
    c.router.partition(&[&[lonely], &rest]);
    let err = c.node(lonely).write(desired("m", 5)).await.unwrap_err();
    assert!(
        matches!(
            err,
            ControlPlaneError::NoLeader { .. } | ControlPlaneError::Indeterminate(_)
        ),
        "{err:?}"
    );
    assert_eq!(
        c.node(lonely).state().borrow().desired_replicas().get("m"),
        Some(&4)
    );
    // Pre-vote keeps it from bumping the term, so the leader survives the heal.
    c.router.heal();
    c.node(leader).write(desired("m", 6)).await.unwrap();
    let s = c.converged().await;
    assert_eq!(s.desired_replicas().get("m"), Some(&6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_compact_the_log_and_restarts_recover_from_snapshot_and_tail() {
    let config = ControlPlaneConfig {
        snapshot_logs_since_last: 20,
        max_in_snapshot_log_to_keep: 5,
        ..ControlPlaneConfig::for_tests()
    };
    let mut c = Cluster::open(&[1, 2, 3], config).await;
    c.form().await;
    let leader = c.leader().await;
    let [f1, f2] = followers(&c, leader)[..] else {
        panic!("two followers expected")
    };

    // f2 is down while the log runs far past what the leader keeps.
    c.kill(f2).await;
    for i in 0..60u64 {
        c.node(leader).write(add_node(100 + i)).await.unwrap();
    }
    for id in [leader, f1] {
        let m = c
            .wait_metrics(id, "a snapshot and a purged log", |m| {
                m.snapshot_index.is_some_and(|s| s >= 40) && m.purged_index.is_some_and(|p| p >= 30)
            })
            .await;
        assert!(
            m.purged_index < m.snapshot_index,
            "keeps a few entries below the snapshot"
        );
    }
    // A few entries past the snapshot, so a restart needs snapshot + tail.
    for i in 0..3u64 {
        c.node(leader).write(add_node(200 + i)).await.unwrap();
    }
    let before = c.converged().await;
    assert_eq!(before.nodes().len(), 63);

    // f1 restarts: snapshot from disk plus the log tail, no peer needed.
    c.kill(f1).await;
    c.start(f1).await;
    assert_eq!(*c.node(f1).state().borrow().clone(), *before);
    c.wait_metrics(f1, "its snapshot loaded", |m| {
        m.snapshot_index.is_some_and(|s| s >= 40)
    })
    .await;

    // f2 comes back far behind the leader's purged log: it gets the snapshot.
    c.start(f2).await;
    let s = c
        .wait_state(f2, "caught up", |s| s.nodes().len() == 63)
        .await;
    assert_eq!(*s, *before);
    let m = c
        .wait_metrics(f2, "installed snapshot", |m| m.snapshot_index.is_some())
        .await;
    assert!(m.snapshot_index >= Some(40), "{m:?}");
    c.converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_through_any_member_and_voters_survive_a_rack_loss() {
    let mut c = Cluster::open(&[1, 2, 3], ControlPlaneConfig::for_tests()).await;
    c.form().await;
    let rack = |id: u64| ["a", "b", "c"][((id - 1) % 3) as usize];
    let leader = c.leader().await;
    for id in [1, 2, 3] {
        c.node(leader)
            .write(ControlCommand::AddNode(node_info(id, rack(id))))
            .await
            .unwrap();
    }

    // Two newcomers ask a follower, the only address they know; they are redirected.
    let seed = followers(&c, leader)[0];
    let seeds = [(seed, addr(seed))];
    for expected in [4, 5] {
        let outsider = c.router.transport(0);
        let reply = send_to_leader(
            &outsider,
            &seeds,
            RaftRpc::ClientWrite(ControlCommand::AllocateNodeId),
            WAIT,
        )
        .await
        .unwrap();
        let RaftRpcReply::ClientWrite {
            response: ControlResponse::NodeIdAllocated(id),
            ..
        } = reply
        else {
            panic!("unexpected reply {reply:?}")
        };
        assert_eq!(id, expected);
        c.dirs.insert(id, tempfile::tempdir().unwrap());
        c.start(id).await;
        let reply = send_to_leader(
            &c.router.transport(id),
            &seeds,
            RaftRpc::AddLearner { id, addr: addr(id) },
            WAIT,
        )
        .await
        .unwrap();
        assert!(
            matches!(reply, RaftRpcReply::MembershipChanged),
            "{reply:?}"
        );
        // As a learner it forwards its own registration to the leader.
        let info = node_info(id, rack(id));
        assert_eq!(
            c.node(id)
                .write(ControlCommand::AddNode(info))
                .await
                .unwrap(),
            ControlResponse::Ok
        );
    }

    // The voter policy picks five voters over three racks; any follower can apply it.
    let state = c.converged().await;
    let candidates: Vec<VoterCandidate> = state
        .nodes()
        .values()
        .map(|n| VoterCandidate {
            id: n.id,
            rack: n.rack.clone(),
            is_voter: c.node(leader).metrics().voters.contains(&n.id),
        })
        .collect();
    let voters = choose_voters(&candidates, 5);
    assert_eq!(voters, [1, 2, 3, 4, 5].into());
    assert!(survives_any_rack_loss(voters.iter().map(|id| rack(*id))));
    c.node(seed)
        .change_membership(voters.clone())
        .await
        .unwrap();
    for id in 1..=5 {
        c.wait_metrics(id, "five voters", |m| m.voters == voters)
            .await;
    }

    // Rack "a" (nodes 1 and 4) goes down: three of five voters remain, a quorum.
    c.kill(1).await;
    c.kill(4).await;
    let leader = c.leader().await;
    assert!(![1, 4].contains(&leader));
    assert_eq!(
        c.node(5).write(desired("m", 7)).await.unwrap(),
        ControlResponse::Ok
    );
    let s = c.converged().await;
    assert_eq!(s.desired_replicas().get("m"), Some(&7));
}
