//! A cluster of real nodes on loopback, driven through the CLI.

use crate::{sluice_bin, Proc};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A UDP port free now (for a node's QUIC endpoint).
pub fn free_port() -> Result<u16> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
    Ok(s.local_addr()?.port())
}

/// A TCP port free now (for a front door). Asking UDP for a TCP port, as before, could
/// hand out one a replica was already listening on.
pub fn free_tcp_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs a sluice command to its end; one that runs past a minute (a node that was
/// expected to refuse to start, say) is killed and fails the test instead of hanging it.
pub fn sluice(args: &[&str]) -> Result<std::process::Output> {
    let mut child = Command::new(sluice_bin()?)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("cannot run sluice")?;
    let start = Instant::now();
    while child.try_wait()?.is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            bail!(
                "`sluice {}` still running after 60 s; stderr: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child
        .wait_with_output()
        .context("cannot read sluice's output")
}

pub fn status(dir: &Path, node: Option<&str>) -> Result<Value> {
    let d = dir.to_string_lossy();
    let mut args = vec!["cluster", "status", "--json", "--data-dir", &d];
    if let Some(n) = node {
        args.extend(["--node", n]);
    }
    let out = sluice(&args)?;
    if !out.status.success() {
        bail!("status failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// A node's data directory and addresses, kept across restarts.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub quic: String,
    pub http_port: u16,
    pub rack: String,
}

impl Node {
    pub fn new(rack: &str) -> Result<Self> {
        Ok(Self {
            dir: tempfile::tempdir()?,
            quic: format!("127.0.0.1:{}", free_port()?),
            http_port: free_tcp_port()?,
            rack: rack.into(),
        })
    }

    /// One zero-delay simulated replica.
    pub fn start(&self, join: Option<(&str, &str)>) -> Result<Proc> {
        self.start_with(join, &["--replicas", "1", "--time-scale", "0"])
    }

    pub fn start_with(&self, join: Option<(&str, &str)>, extra: &[&str]) -> Result<Proc> {
        let dir = self.dir.path().to_string_lossy().into_owned();
        let http = format!("127.0.0.1:{}", self.http_port);
        let mut args = vec![
            "node",
            "start",
            "--data-dir",
            &dir,
            "--listen",
            &self.quic,
            "--http",
            &http,
            "--rack",
            &self.rack,
        ];
        args.extend_from_slice(extra);
        if let Some((peer, token)) = join {
            args.extend(["--join", peer, "--token", token]);
        }
        Proc::start(&args, "sluice node listening on ")
    }
}

/// Polls until `check` holds on a status from `dir`'s node (or any of `nodes`).
pub async fn wait_status(
    nodes: &[&Node],
    limit: Duration,
    check: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let start = Instant::now();
    loop {
        for n in nodes {
            if let Ok(s) = status(n.dir.path(), Some(&n.quic)) {
                if check(&s) {
                    return Ok(s);
                }
            }
        }
        if start.elapsed() > limit {
            bail!("cluster did not reach the expected state within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls until the router at `base` has replicas in service of exactly the nodes
/// `nodes` (ids `node << 20 | i`), by its `sluice_replica_available` gauge: the
/// committed fleet has reached it.
pub async fn wait_router_sees(
    http: &crate::Http,
    base: &str,
    nodes: &[u64],
    limit: Duration,
) -> Result<()> {
    let start = Instant::now();
    loop {
        let samples = http.metric(base, "sluice_replica_available").await?;
        let mut seen: Vec<u64> = samples
            .iter()
            .filter(|(_, v)| *v == 1.0)
            .filter_map(|(labels, _)| {
                let id = labels.split("replica=\"").nth(1)?.split('"').next()?;
                id.parse::<u64>().ok().map(|id| id >> 20)
            })
            .collect();
        seen.sort_unstable();
        seen.dedup();
        if seen == nodes {
            return Ok(());
        }
        if start.elapsed() > limit {
            bail!("the router at {base} sees replicas of nodes {seen:?}, not {nodes:?}, after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Node {
    /// The node's front door.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }
}

/// `sluice cluster init` in `node`'s directory; returns the join token.
pub fn init(node: &Node) -> Result<String> {
    let d = node.dir.path().to_string_lossy().into_owned();
    let out = sluice(&["cluster", "init", "--data-dir", &d])?;
    if !out.status.success() {
        bail!(
            "cluster init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(
        std::fs::read_to_string(node.dir.path().join("tls/join-token"))?
            .trim()
            .to_owned(),
    )
}
