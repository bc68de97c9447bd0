//! `sluice cluster …`: start a cluster, look at it, shrink it. Credentials come from a
//! node's data directory: the CLI speaks mutual TLS with that node's identity.

use super::rpc::{ClusterStatus, NodeReply, NodeRpc};
use super::{INIT_MARKER, TLS_DIR};
use anyhow::{bail, Context, Result};
use sluice_transport::{CaCert, Client, Endpoint, NodeIdentity, TransportConfig};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Where `node start` records its addresses, for the CLI's default target.
pub const ADDR_FILE: &str = "listen";

/// Creates the cluster CA, node 1's identity and a join token in `data_dir`.
pub fn init(data_dir: &Path, name: &str) -> Result<()> {
    let tls = data_dir.join(TLS_DIR);
    std::fs::create_dir_all(&tls).with_context(|| format!("cannot create {}", tls.display()))?;
    let b = sluice_transport::ca::bootstrap(&tls, name, 1)
        .with_context(|| format!("cannot initialize a cluster in {}", data_dir.display()))?;
    std::fs::write(data_dir.join(INIT_MARKER), b"")
        .with_context(|| format!("cannot write into {}", data_dir.display()))?;
    println!("cluster '{name}' initialized in {}", data_dir.display());
    println!(
        "this data directory is node 1; start it with `sluice node start --data-dir {}`",
        data_dir.display()
    );
    println!("join token: {}", b.token);
    Ok(())
}

async fn client(data_dir: &Path) -> Result<Client> {
    let tls = data_dir.join(TLS_DIR);
    let ca = CaCert::load(&tls)
        .with_context(|| format!("no cluster credentials in {}", data_dir.display()))?;
    let identity = NodeIdentity::load(&tls, &ca)
        .with_context(|| format!("no node identity in {}", data_dir.display()))?;
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    let endpoint = Endpoint::bind(any, &identity, &ca, TransportConfig::default())
        .context("cannot open a QUIC endpoint")?;
    Ok(Client::new(endpoint))
}

fn target(data_dir: &Path, node: Option<SocketAddr>) -> Result<SocketAddr> {
    if let Some(n) = node {
        return Ok(n);
    }
    let text = std::fs::read_to_string(data_dir.join(ADDR_FILE)).with_context(|| {
        format!(
            "no --node given and {} records no node address (has the node started?)",
            data_dir.display()
        )
    })?;
    text.trim()
        .parse()
        .with_context(|| format!("bad address in {}", data_dir.join(ADDR_FILE).display()))
}

pub(crate) async fn call(
    data_dir: &Path,
    node: Option<SocketAddr>,
    rpc: NodeRpc,
) -> Result<NodeReply> {
    let addr = target(data_dir, node)?;
    let client = client(data_dir).await?;
    client
        .call::<_, NodeReply>(addr, &rpc, Duration::from_secs(20))
        .await
        .with_context(|| format!("cannot reach the node at {addr}"))
}

pub async fn status(data_dir: &Path, node: Option<SocketAddr>, json: bool) -> Result<()> {
    let s: ClusterStatus = match call(data_dir, node, NodeRpc::Status).await? {
        NodeReply::Status(s) => s,
        other => bail!("unexpected answer: {other:?}"),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    let leader = s.leader.map_or("none".to_owned(), |l| l.to_string());
    let desired = s.desired.map_or("-".to_owned(), |d| d.to_string());
    println!(
        "leader: {leader} · term {} · assignment generation {} · desired replicas {desired} · answered by node {}",
        s.term, s.generation, s.answered_by
    );
    println!(
        "{:<6} {:<8} {:<10} {:<5} {:<22} {:<22}",
        "node", "role", "rack", "gpus", "http", "quic"
    );
    for n in &s.nodes {
        println!(
            "{:<6} {:<8} {:<10} {:<5} {:<22} {:<22}",
            n.id, n.role, n.rack, n.gpus, n.http, n.quic
        );
    }
    println!("{:<12} {:<6} {:<10} endpoint", "replica", "node", "health");
    for r in &s.replicas {
        println!("{:<12} {:<6} {:<10} {}", r.id, r.node, r.health, r.endpoint);
    }
    Ok(())
}

/// Removes `id` from the cluster (its voter seat first, then its record).
pub async fn remove(data_dir: &Path, node: Option<SocketAddr>, id: u64) -> Result<()> {
    match call(data_dir, node, NodeRpc::Remove(id)).await? {
        NodeReply::Done => {
            println!("node {id} removed");
            Ok(())
        }
        NodeReply::Failed(e) => bail!("removing node {id} failed: {e}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}

/// This data directory's node leaves the cluster.
pub async fn leave(data_dir: &Path, node: Option<SocketAddr>) -> Result<()> {
    let tls = data_dir.join(TLS_DIR);
    let ca = CaCert::load(&tls)?;
    let id = NodeIdentity::load(&tls, &ca)?.node_id();
    remove(data_dir, node, id).await
}

/// Drains a replica: it takes no new requests, finishes those in flight (up to its
/// node's drain deadline), then its node stops it and removes it from the registry.
pub async fn drain(data_dir: &Path, node: Option<SocketAddr>, replica: u64) -> Result<()> {
    let cmd = sluice_raft::ControlCommand::SetReplicaHealth {
        replica: sluice_actors::slice::ReplicaId(replica),
        health: sluice_raft::ReplicaHealth::Draining,
    };
    match call(data_dir, node, NodeRpc::Write(cmd)).await? {
        NodeReply::Done => {
            println!("replica {replica} is draining");
            Ok(())
        }
        NodeReply::Failed(e) => bail!("replica {replica} cannot be drained: {e}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}

/// Chaos hook: the node drops all cluster traffic to and from `nodes` (empty: heals).
pub async fn isolate(data_dir: &Path, node: Option<SocketAddr>, nodes: Vec<u64>) -> Result<()> {
    match call(data_dir, node, NodeRpc::Isolate(nodes.clone())).await? {
        NodeReply::Done => {
            println!("isolated from {nodes:?}");
            Ok(())
        }
        other => bail!("unexpected answer: {other:?}"),
    }
}
