//! `sluice replica sim`: one simulated GPU engine serving the OpenAI API.

use crate::launcher::READY_PREFIX;
use anyhow::{Context, Result};
use sluice_actors::Profile;
use sluice_engine::server::{serve, ServerConfig};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

pub struct SimArgs {
    pub host: std::net::IpAddr,
    pub port: u16,
    pub profile: Option<PathBuf>,
    pub model: Option<String>,
    pub time_scale: f64,
    pub seed: u64,
    pub poison: Option<String>,
}

pub async fn run(args: SimArgs) -> Result<()> {
    let profile = match &args.profile {
        Some(p) => Profile::load(p)?,
        None => Profile::default_profile(),
    };
    if !(args.time_scale.is_finite() && args.time_scale >= 0.0) {
        anyhow::bail!(
            "--time-scale must be a non-negative number, got {}",
            args.time_scale
        );
    }
    let addr = SocketAddr::new(args.host, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let model = args.model.unwrap_or(profile.model.clone());
    tracing::info!(%local, %model, time_scale = args.time_scale, "simulated replica serving");
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{READY_PREFIX}http://{local}")?;
        out.flush()?;
    }
    let config = ServerConfig {
        model,
        params: profile.engine.clone(),
        time_scale: args.time_scale,
        seed: args.seed,
        poison: args.poison,
    };
    serve(listener, config, crate::server::shutdown_signal()).await?;
    Ok(())
}
