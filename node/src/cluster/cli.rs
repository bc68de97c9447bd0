//! `sluice cluster …`: start a cluster, look at it, shrink it. Credentials come from a
//! node's data directory: the CLI speaks mutual TLS with that node's identity.

use super::rpc::{
    AdminAnswer, AdminRpc, ClusterStatus, DrillRpc, NodeReply, NodeRpc, Refusal, RpcError,
};
use super::{INIT_MARKER, TLS_DIR};
use anyhow::{bail, Context, Result};
use sluice_transport::{
    CaCert, Client, ClusterCa, Endpoint, JoinToken, NodeIdentity, TransportConfig,
};
use std::net::SocketAddr;
use std::path::Path;

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

/// An admin request to the node of `data_dir` (or `node`). An unknown outcome says
/// how to find out what happened.
pub(crate) async fn admin(
    data_dir: &Path,
    node: Option<SocketAddr>,
    rpc: AdminRpc,
) -> Result<AdminAnswer> {
    let addr = target(data_dir, node)?;
    let client = client(data_dir).await?;
    super::call::admin(&client, addr, rpc)
        .await
        .map_err(|e| explain(e, addr))
}

/// A write to the control state through the node of `data_dir` (or `node`).
pub(crate) async fn write(
    data_dir: &Path,
    node: Option<SocketAddr>,
    cmd: sluice_raft::ControlCommand,
) -> Result<()> {
    admin(data_dir, node, AdminRpc::Write(cmd)).await.map(drop)
}

/// The cluster's status as the node of `data_dir` (or `node`) sees it.
pub(crate) async fn fetch_status(
    data_dir: &Path,
    node: Option<SocketAddr>,
) -> Result<ClusterStatus> {
    match admin(data_dir, node, AdminRpc::Status).await? {
        AdminAnswer::Status(s) => Ok(*s),
        other => bail!("unexpected answer: {other:?}"),
    }
}

fn explain(e: RpcError, addr: SocketAddr) -> anyhow::Error {
    match e {
        RpcError::Refused(Refusal::Unreachable(why)) => {
            anyhow::anyhow!("cannot reach the node at {addr}: {why}")
        }
        RpcError::Unknown(why) => anyhow::anyhow!(
            "the node at {addr} did not answer ({why}); the change may or may not have been made: \
             look with `sluice cluster status` before repeating it"
        ),
        refused => anyhow::anyhow!("{refused}"),
    }
}

pub async fn status(data_dir: &Path, node: Option<SocketAddr>, json: bool) -> Result<()> {
    let s = fetch_status(data_dir, node).await?;
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
    println!(
        "{:<12} {:<6} {:<24} {:<10} endpoint",
        "replica", "node", "model", "health"
    );
    for r in &s.replicas {
        println!(
            "{:<12} {:<6} {:<24} {:<10} {}",
            r.id, r.node, r.model, r.health, r.endpoint
        );
    }
    if s.models.len() > 1 {
        for m in &s.models {
            let desired = m.desired.map_or("-".to_owned(), |d| d.to_string());
            println!(
                "model {}: {} replicas ({} healthy) · assignment generation {} over {} slices · desired {desired}",
                m.model, m.replicas, m.healthy, m.generation, m.slices
            );
        }
    }
    if let Some(ca) = &s.ca_sha256 {
        println!("cluster CA: {ca}");
    }
    if let Some(r) = &s.ca_rotation {
        println!(
            "CA rotation to {}: {}, done on {} of {} members",
            r.to_sha256,
            r.phase,
            r.done.len(),
            s.nodes.len()
        );
    }
    Ok(())
}

/// Removes `id` from the cluster (its voter seat first, then its record).
pub async fn remove(data_dir: &Path, node: Option<SocketAddr>, id: u64) -> Result<()> {
    admin(data_dir, node, AdminRpc::Remove(id))
        .await
        .with_context(|| format!("removing node {id} failed"))?;
    println!("node {id} removed");
    Ok(())
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
    write(data_dir, node, cmd)
        .await
        .with_context(|| format!("replica {replica} cannot be drained"))?;
    println!("replica {replica} is draining");
    Ok(())
}

/// Chaos hook: the node drops all cluster traffic to and from `nodes` (empty: heals).
pub async fn isolate(data_dir: &Path, node: Option<SocketAddr>, nodes: Vec<u64>) -> Result<()> {
    let addr = target(data_dir, node)?;
    let client = client(data_dir).await?;
    let rpc = NodeRpc::Drill(DrillRpc::Isolate(nodes.clone()));
    let answer = match client
        .call::<_, NodeReply>(addr, &rpc, super::call::ADMIN_TIMEOUT)
        .await
    {
        Ok(NodeReply::Drill(answer)) => answer,
        Ok(other) => Err(super::call::unexpected(&other)),
        Err(e) => Err(e.into()),
    };
    answer.map_err(|e| explain(e, addr))?;
    println!("isolated from {nodes:?}");
    Ok(())
}

/// Makes a join token, records its hash in the control state under `id`, and prints it.
pub async fn token_create(
    data_dir: &Path,
    node: Option<SocketAddr>,
    id: Option<String>,
) -> Result<()> {
    let (id, token) = create_token(data_dir, node, id).await?;
    println!(
        "join token {id} created; pass it to `node start --join PEER --token` (shown only now):"
    );
    println!("{token}");
    Ok(())
}

/// Makes a join token and records its hash in the control state under `id` (or one
/// made from the token): the id and the token.
pub(crate) async fn create_token(
    data_dir: &Path,
    node: Option<SocketAddr>,
    id: Option<String>,
) -> Result<(String, JoinToken)> {
    let ca = CaCert::load(&data_dir.join(TLS_DIR))
        .with_context(|| format!("no cluster credentials in {}", data_dir.display()))?;
    let token = JoinToken::generate(&ca).context("cannot make a token")?;
    let hash = crate::tenants::keys::sha256(token.secret());
    let id = id.unwrap_or_else(|| {
        let short: String = hash[..4].iter().map(|b| format!("{b:02x}")).collect();
        format!("token-{short}")
    });
    let cmd = sluice_raft::ControlCommand::AddJoinToken {
        id: id.clone(),
        secret_sha256: hash,
    };
    write(data_dir, node, cmd)
        .await
        .map_err(|e| e.context(format!("join token {id} was not created")))?;
    Ok((id, token))
}

/// No node joins with token `id` any more.
pub async fn token_revoke(data_dir: &Path, node: Option<SocketAddr>, id: &str) -> Result<()> {
    let known = fetch_status(data_dir, node).await?.join_tokens;
    if !known.iter().any(|t| t == id) {
        bail!(
            "no join token {id}; the live ones are: {}",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        );
    }
    write(
        data_dir,
        node,
        sluice_raft::ControlCommand::RevokeJoinToken(id.to_owned()),
    )
    .await?;
    println!("join token {id} revoked");
    Ok(())
}

/// Starts rotating the cluster's CA to one made here (see `sluice_raft::CaRotation`).
pub async fn rotate_ca(data_dir: &Path, node: Option<SocketAddr>) -> Result<()> {
    let status = fetch_status(data_dir, node).await?;
    if let Some(r) = status.ca_rotation {
        bail!(
            "a CA rotation is under way (to {}, {}): it finishes first",
            r.to_sha256,
            r.phase
        );
    }
    let ca = ClusterCa::generate("sluice").context("cannot make a CA")?;
    let cmd = sluice_raft::ControlCommand::BeginCaRotation {
        ca_cert_pem: ca.cert().pem(),
        ca_key_pem: ca.key_pem(),
    };
    write(data_dir, node, cmd)
        .await
        .map_err(|e| e.context("the CA rotation was not started"))?;
    println!(
        "rotating the cluster's CA to {}: members trust it, then renew under it; \
         `cluster status` shows the progress. Join tokens pin the CA: create new ones once it is over.",
        ca.cert().fingerprint_hex()
    );
    Ok(())
}

/// Prints the ids of the live join tokens.
pub async fn token_list(data_dir: &Path, node: Option<SocketAddr>) -> Result<()> {
    for id in fetch_status(data_dir, node).await?.join_tokens {
        println!("{id}");
    }
    Ok(())
}
