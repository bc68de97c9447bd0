//! Launches engine replicas as child processes of the node — the simulated engine (the
//! embedded default) or a real one from a command template — waits until each is ready,
//! and stops them with it.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The line a replica prints on stdout once it is listening.
pub const READY_PREFIX: &str = "sluice replica listening on ";

/// How to start one replica.
#[derive(Debug, Clone)]
pub struct EngineSpec {
    pub model: String,
    pub profile: Option<PathBuf>,
    pub time_scale: f64,
    /// A real engine's command template; `None`: the simulated engine.
    pub command: Option<String>,
    /// How long a real engine may take to answer `/health`.
    pub start_timeout: Duration,
}

/// A running child replica.
pub struct ChildReplica {
    pub url: String,
    child: Child,
}

/// Starts `count` replicas and waits until each is ready.
pub async fn launch(count: usize, spec: &EngineSpec) -> Result<Vec<ChildReplica>> {
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        out.push(launch_one(i, spec).await?);
    }
    Ok(out)
}

/// Starts replica number `i` and waits until it is ready.
pub async fn launch_one(i: usize, spec: &EngineSpec) -> Result<ChildReplica> {
    match &spec.command {
        Some(template) => launch_command(i, template, spec).await,
        None => launch_sim(i, spec).await,
    }
}

async fn launch_sim(i: usize, spec: &EngineSpec) -> Result<ChildReplica> {
    let exe =
        std::env::current_exe().context("cannot find the sluice executable to launch replicas")?;
    let mut cmd = Command::new(&exe);
    cmd.args([
        "replica",
        "sim",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--model",
        &spec.model,
    ])
    .args([
        "--time-scale",
        &spec.time_scale.to_string(),
        "--seed",
        &i.to_string(),
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .kill_on_drop(true);
    if let Some(p) = &spec.profile {
        cmd.arg("--profile").arg(p);
    }
    engine_env(&mut cmd);
    die_with_parent(&mut cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start replica {i}"))?;
    let url = match tokio::time::timeout(Duration::from_secs(30), ready_url(&mut child)).await {
        Ok(Ok(url)) => url,
        Ok(Err(e)) => return Err(e.context(format!("replica {i} did not start"))),
        Err(_) => bail!("replica {i} did not report it was listening within 30 s"),
    };
    tracing::info!(replica = i, %url, pid = child.id(), "replica started");
    Ok(ChildReplica { url, child })
}

/// The words of a command template with its placeholders filled in. Split on
/// whitespace before filling, so a value can never add arguments.
pub fn fill_template(
    template: &str,
    model: &str,
    host: &str,
    port: u16,
    index: usize,
) -> Vec<String> {
    template
        .split_whitespace()
        .map(|w| {
            w.replace("{model}", model)
                .replace("{host}", host)
                .replace("{port}", &port.to_string())
                .replace("{index}", &index.to_string())
        })
        .collect()
}

/// A real engine: a free loopback port, the filled template, then `/health` polled
/// until it answers 200 (model loading can take minutes) or the process exits.
async fn launch_command(i: usize, template: &str, spec: &EngineSpec) -> Result<ChildReplica> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("cannot find a free port for the engine")?
        .port();
    let words = fill_template(template, &spec.model, "127.0.0.1", port, i);
    let Some((program, args)) = words.split_first() else {
        bail!("replicas.command is empty");
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    engine_env(&mut cmd);
    die_with_parent(&mut cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start replica {i} with `{}`", words.join(" ")))?;
    let url = format!("http://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + spec.start_timeout;
    let client = crate::front::http_client(Duration::from_secs(1));
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("replica {i} exited with {status} before it was ready");
        }
        if health_ok(&client, &url).await {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill().await;
            bail!(
                "replica {i} did not answer {url}/health within {:?}",
                spec.start_timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tracing::info!(replica = i, %url, pid = child.id(), "replica started");
    Ok(ChildReplica { url, child })
}

async fn health_ok(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    url: &str,
) -> bool {
    let Ok(req) = hyper::Request::get(format!("{url}/health"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
    else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), client.request(req)).await,
        Ok(Ok(resp)) if resp.status().is_success()
    )
}

/// The host's core count is the wrong default inside a container: size the engine's
/// thread pools from the CPU quota (unless the operator set OMP_NUM_THREADS).
fn engine_env(cmd: &mut Command) {
    if let Some(n) = crate::supervisor::cpu_quota::for_this_host() {
        cmd.env("OMP_NUM_THREADS", n.to_string());
    }
}

impl ChildReplica {
    /// Resolves when the process exits (crashed, killed, or stopped).
    pub async fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.wait().await.ok()
    }

    /// SIGKILL: for an engine that no longer makes progress.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        if let Some(pid) = self.child.id() {
            // SAFETY: sending a signal to our own child's pid.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

async fn ready_url(child: &mut Child) -> Result<String> {
    let stdout = child
        .stdout
        .take()
        .context("replica stdout was not captured")?;
    let mut lines = BufReader::new(stdout).lines();
    while let Some(line) = lines.next_line().await? {
        if let Some(url) = line.strip_prefix(READY_PREFIX) {
            let url = url.trim().to_owned();
            // Keep draining so the child never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok(url);
        }
    }
    bail!("replica exited before it was listening")
}

/// On Linux, a child gets SIGTERM if the node dies without stopping it (even `kill -9`).
fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe and touches only the calling (child) process.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_placeholders_without_adding_arguments() {
        let w = fill_template(
            "vllm serve {model} --host {host} --port {port} --seed {index}",
            "meta llama",
            "127.0.0.1",
            8001,
            3,
        );
        assert_eq!(
            w,
            [
                "vllm",
                "serve",
                "meta llama",
                "--host",
                "127.0.0.1",
                "--port",
                "8001",
                "--seed",
                "3"
            ]
        );
    }
}
