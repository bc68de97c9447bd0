//! A local cluster of real `sluice node` processes for a drill: loopback ports, a data
//! directory each, racks assigned round-robin. Nodes are killed with SIGKILL (a crash)
//! or stopped with SIGTERM (a restart), and started again from their data directory.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const READY: &str = "sluice node listening on ";

/// The text that makes a drill's simulated engines hang (`poison-request`); every node
/// passes it to the engines it starts.
pub const POISON: &str = "sluice-drill-poison-7f3a";

pub struct DrillNode {
    pub index: usize,
    pub rack: String,
    pub dir: PathBuf,
    pub quic: String,
    pub http: String,
    child: Option<Child>,
}

pub struct Cluster {
    exe: PathBuf,
    pub nodes: Vec<DrillNode>,
    token: String,
    gpus: usize,
    /// The nodes' file lists several models (and their replicas).
    several_models: bool,
    config: PathBuf,
    _work: tempfile::TempDir,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The nodes' `[[models]]` when they serve several: `gpus` replicas split between them
/// (the first takes what does not divide evenly). One model: none (the flags say).
fn models_section(gpus: usize, models: &[&str]) -> String {
    if models.len() < 2 {
        return String::new();
    }
    let each = gpus / models.len();
    models
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let n = if i == 0 {
                gpus - each * (models.len() - 1)
            } else {
                each
            };
            format!("\n[[models]]\nname = {m:?}\nreplicas = {n}\n")
        })
        .collect()
}

impl Cluster {
    /// Initializes a cluster in a fresh directory and starts its nodes, each with
    /// `gpus` replicas split between `models`; returns once every node is a member and
    /// every replica is registered. `config_extra` is added to the nodes' configuration
    /// file.
    pub async fn start(
        exe: &Path,
        nodes: usize,
        racks: usize,
        (gpus, models): (usize, &[&str]),
        config_extra: &str,
    ) -> Result<Self> {
        // SLUICE_DRILL_KEEP=1 keeps the nodes' directories and logs for a post-mortem.
        let keep = std::env::var_os("SLUICE_DRILL_KEEP").is_some_and(|v| v == "1");
        let work = tempfile::Builder::new()
            .prefix("sluice-drill-")
            .disable_cleanup(keep)
            .tempdir()
            .context("cannot create the drill's directory")?;
        if keep {
            eprintln!("keeping the drill's directory {}", work.path().display());
        }
        let config = work.path().join("node.toml");
        // Time for in-flight streams to finish on a rolling restart.
        std::fs::write(
            &config,
            format!(
                "[node]\nshutdown_grace_s = 20\n{config_extra}{}",
                models_section(gpus, models)
            ),
        )?;
        let mut list = Vec::new();
        for i in 0..nodes {
            let dir = work.path().join(format!("node{i}"));
            std::fs::create_dir_all(&dir)?;
            list.push(DrillNode {
                index: i,
                rack: format!("rack-{}", i % racks.max(1)),
                dir,
                quic: format!("127.0.0.1:{}", free_port()?),
                http: format!("127.0.0.1:{}", free_port()?),
                child: None,
            });
        }
        let out = Command::new(exe)
            .args(["cluster", "init", "--data-dir"])
            .arg(&list[0].dir)
            .output()
            .await
            .context("cannot run sluice cluster init")?;
        if !out.status.success() {
            bail!(
                "cluster init failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let token = std::fs::read_to_string(list[0].dir.join("tls/join-token"))?
            .trim()
            .to_owned();
        let mut c = Self {
            exe: exe.to_owned(),
            nodes: list,
            token,
            gpus,
            several_models: models.len() > 1,
            config,
            _work: work,
        };
        for i in 0..nodes {
            c.first_launch(i).await?;
        }
        c.wait(Duration::from_secs(60), |s| {
            s["nodes"].as_array().is_some_and(|n| n.len() == nodes)
                && s["replicas"].as_array().is_some_and(|r| {
                    r.len() == nodes * gpus && r.iter().all(|x| x["health"] == "healthy")
                })
                && s["leader"].is_u64()
        })
        .await
        .context("the drill's cluster did not form")?;
        Ok(c)
    }

    /// Ports are picked before the node binds them, so another process (an engine of an
    /// earlier node) can take one in between; a node that never started gets new ports.
    async fn first_launch(&mut self, i: usize) -> Result<()> {
        let mut attempt = 0;
        loop {
            match self.launch(i, i > 0).await {
                Err(e) if attempt < 2 && self.log_tail(i).contains("in use") => {
                    eprintln!("node {i}: a port was taken ({e}); picking new ones");
                    attempt += 1;
                    self.nodes[i].quic = format!("127.0.0.1:{}", free_port()?);
                    self.nodes[i].http = format!("127.0.0.1:{}", free_port()?);
                }
                other => return other,
            }
        }
    }

    /// The end of a node's log, for an error message.
    fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(self.nodes[i].dir.join("node.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }

    async fn launch(&mut self, i: usize, join: bool) -> Result<()> {
        let gpus = self.gpus.to_string();
        let n = &self.nodes[i];
        let mut cmd = Command::new(&self.exe);
        cmd.args(["node", "start", "--data-dir"])
            .arg(&n.dir)
            .args(["--listen", &n.quic, "--http", &n.http, "--rack", &n.rack])
            .args(["--gpus", &gpus, "--config"])
            .arg(&self.config);
        if !self.several_models {
            // Several models list their replicas in the file.
            cmd.args(["--replicas", &gpus]);
        }
        if join && !n.dir.join("tls/node.pem").exists() {
            cmd.args(["--join", &self.nodes[0].quic, "--token", &self.token]);
        }
        cmd.env("SLUICE_SIM_POISON", POISON);
        // The drill partitions nodes with `cluster isolate`.
        cmd.env("SLUICE_DRILL_HOOKS", "1");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(n.dir.join("node.log"))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("cannot start a node")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with(READY) {
                    return true;
                }
            }
            false
        })
        .await;
        if !matches!(ready, Ok(true)) {
            let _ = child.kill().await;
            bail!(
                "node {i} did not start ({}); its log ends:\n{}",
                n.dir.join("node.log").display(),
                self.log_tail(i)
            );
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.nodes[i].child = Some(child);
        Ok(())
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// SIGKILL: the node and (through their parent-death signal) its engines die.
    pub async fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill().await;
        }
    }

    /// SIGTERM, then wait: in-flight requests get the node's grace period.
    pub async fn stop(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            if let Some(pid) = c.id() {
                // SAFETY: signalling our own child.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGTERM);
                }
            }
            if tokio::time::timeout(Duration::from_secs(30), c.wait())
                .await
                .is_err()
            {
                let _ = c.kill().await;
            }
        }
    }

    pub async fn restart(&mut self, i: usize) -> Result<()> {
        if self.nodes[i].child.is_none() {
            self.launch(i, false).await?;
        }
        Ok(())
    }

    /// A node's `sluice cluster status --json`.
    pub async fn status_of(&self, i: usize) -> Option<Value> {
        let n = &self.nodes[i];
        let out = tokio::time::timeout(
            Duration::from_secs(5),
            Command::new(&self.exe)
                .args(["cluster", "status", "--json", "--data-dir"])
                .arg(&n.dir)
                .args(["--node", &n.quic])
                .output(),
        )
        .await
        .ok()?
        .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The first status from a running node.
    pub async fn status(&self) -> Option<Value> {
        for i in 0..self.nodes.len() {
            if self.is_up(i) {
                if let Some(s) = self.status_of(i).await {
                    return Some(s);
                }
            }
        }
        None
    }

    pub async fn wait(&self, limit: Duration, check: impl Fn(&Value) -> bool) -> Result<Value> {
        let until = tokio::time::Instant::now() + limit;
        loop {
            if let Some(s) = self.status().await {
                if check(&s) {
                    return Ok(s);
                }
            }
            if tokio::time::Instant::now() >= until {
                bail!("the cluster did not reach the expected state within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The node index of the Raft leader.
    pub async fn leader(&self) -> Option<usize> {
        let id = self.status().await?["leader"].as_u64()?;
        let s = self.status().await?;
        let quic = s["nodes"].as_array()?.iter().find(|n| n["id"] == id)?["quic"]
            .as_str()?
            .to_owned();
        self.nodes.iter().position(|n| n.quic == quic)
    }

    /// Node ids by index, from a status.
    pub fn ids(&self, s: &Value) -> Vec<Option<u64>> {
        self.nodes
            .iter()
            .map(|n| {
                s["nodes"]
                    .as_array()?
                    .iter()
                    .find(|x| x["quic"] == n.quic.as_str())?["id"]
                    .as_u64()
            })
            .collect()
    }

    /// `sluice cluster rotate-ca` with node `i`'s credentials.
    pub async fn rotate_ca(&self, i: usize) -> Result<()> {
        let n = &self.nodes[i];
        let out = Command::new(&self.exe)
            .args(["cluster", "rotate-ca", "--data-dir"])
            .arg(&n.dir)
            .args(["--node", &n.quic])
            .output()
            .await
            .context("cannot run cluster rotate-ca")?;
        if !out.status.success() {
            bail!("rotate-ca failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// `sluice cluster isolate --from IDS` on node `i` (empty: heal).
    pub async fn isolate(&self, i: usize, from: &[u64]) -> Result<()> {
        let n = &self.nodes[i];
        let list: Vec<String> = from.iter().map(u64::to_string).collect();
        let mut cmd = Command::new(&self.exe);
        cmd.args(["cluster", "isolate", "--data-dir"])
            .arg(&n.dir)
            .args(["--node", &n.quic]);
        if !list.is_empty() {
            cmd.args(["--from", &list.join(",")]);
        }
        let out = tokio::time::timeout(Duration::from_secs(10), cmd.output())
            .await
            .context("isolate timed out")??;
        if !out.status.success() {
            bail!("isolate failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    pub fn front_doors(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("http://{}", n.http))
            .collect()
    }
}
