//! Helpers for multi-process tests: start real `sluice` processes on loopback, talk
//! HTTP to them, read their metrics.

pub mod cluster;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The `sluice` binary of this workspace (or `SLUICE_BIN`), brought up to date once per
/// test process: a binary left over from an older checkout would otherwise be tested
/// in silence. Cargo's check of an up-to-date binary costs well under a second.
pub fn sluice_bin() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("SLUICE_BIN") {
        return Ok(PathBuf::from(p));
    }
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| build_sluice().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_sluice() -> Result<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let status = Command::new(env!("CARGO"))
        .args(["build", "-p", "sluice", "--bin", "sluice"])
        .current_dir(&root)
        .status()
        .context("cannot run cargo build")?;
    if !status.success() {
        bail!("cargo build -p sluice failed");
    }
    Ok(target.join("debug").join("sluice"))
}

/// A child process that is killed when dropped.
pub struct Proc {
    pub child: Child,
    pub url: String,
}

impl Proc {
    /// Starts `sluice ARGS` and waits for its `… listening on URL` line.
    pub fn start(args: &[&str], ready_prefix: &str) -> Result<Self> {
        let mut child = Command::new(sluice_bin()?)
            .args(args)
            // Tests cut nodes off from each other with `cluster isolate`.
            .env("SLUICE_DRILL_HOOKS", "1")
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .context("cannot start sluice")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = mpsc::channel();
        let prefix = ready_prefix.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix(&prefix) {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => Ok(Self { child, url }),
            Err(_) => {
                let _ = child.kill();
                bail!("sluice {args:?} did not start listening")
            }
        }
    }

    /// A node with a config file written from `config`.
    pub fn node(config: &str, extra: &[&str]) -> Result<(Self, tempfile::NamedTempFile)> {
        let mut f = tempfile::NamedTempFile::new()?;
        f.write_all(config.as_bytes())?;
        let path = f.path().to_string_lossy().into_owned();
        let mut args = vec!["node", "start", "--http", "127.0.0.1:0", "--config", &path];
        args.extend_from_slice(extra);
        Ok((Self::start(&args, "sluice node listening on ")?, f))
    }

    /// SIGTERM, then wait; returns whether it exited successfully.
    pub fn stop(mut self) -> Result<bool> {
        // SAFETY-free: use the `kill` command to send SIGTERM without libc.
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        for _ in 0..300 {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s.success());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("process did not stop within 15 s of SIGTERM")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A response: status, headers we care about, body.
pub struct Answer {
    pub status: u16,
    pub replica: Option<u64>,
    pub body: Bytes,
}

#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Self {
            client: Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(HttpConnector::new()),
        }
    }
}

impl Http {
    /// Sends a request; returns as soon as the headers arrive, with the body left to
    /// `finish` (so a test can hold a stream open).
    pub async fn start(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Result<(u16, Option<u64>, hyper::body::Incoming)> {
        let mut b = hyper::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        if body.is_some() {
            b = b.header("content-type", "application/json");
        }
        let req = b.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let resp = self.client.request(req).await?;
        let replica = resp
            .headers()
            .get("x-sluice-replica")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Ok((resp.status().as_u16(), replica, resp.into_body()))
    }

    /// Sends a request built by the caller; the body is left to read.
    pub async fn raw(
        &self,
        req: hyper::Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        Ok(self.client.request(req).await?)
    }

    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Result<Answer> {
        let (status, replica, body) = self.start(method, url, headers, body).await?;
        let body = body.collect().await?.to_bytes();
        Ok(Answer {
            status,
            replica,
            body,
        })
    }

    /// Every sample of `name` on a `/metrics` page, as (labels, value).
    pub async fn metric(&self, base: &str, name: &str) -> Result<Vec<(String, f64)>> {
        let a = self
            .send("GET", &format!("{base}/metrics"), &[], None)
            .await?;
        let text = String::from_utf8_lossy(&a.body).into_owned();
        Ok(sluice_engine::exposition::samples(&text)
            .filter(|s| s.name == name)
            .map(|s| (s.labels.to_owned(), s.value))
            .collect())
    }
}

/// The embedded profile with `capacity` MU/min per replica, written into `dir`: small,
/// so that a load a test machine can offer is several times a fleet's capacity (the
/// simulated engines keep their real speed, far above it).
pub fn small_profile(dir: &std::path::Path, capacity: f64) -> Result<PathBuf> {
    let src =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../actors/profiles/llama-3.1-8b-h100.toml");
    let text = std::fs::read_to_string(&src)?;
    let line = text
        .lines()
        .find(|l| l.starts_with("capacity_mu_per_min"))
        .context("profile has no capacity")?;
    let path = dir.join("small.toml");
    std::fs::write(
        &path,
        text.replace(line, &format!("capacity_mu_per_min = {capacity:.1}")),
    )?;
    Ok(path)
}
