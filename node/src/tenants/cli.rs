//! `sluice tenant …`: create tenants (the key is printed once, only its hash is
//! stored), reserve capacity in MU/min, list them. They reach the cluster the way
//! `sluice cluster status` does, and a refusal is a non-zero exit with its reason.

use super::keys;
use crate::cluster::cli::{fetch_status, write};
use anyhow::{bail, Result};
use sluice_raft::ControlCommand;
use std::net::SocketAddr;
use std::path::Path;

/// Creates `name` and prints its API key (the only time it is shown).
pub async fn create(data_dir: &Path, node: Option<SocketAddr>, name: &str) -> Result<()> {
    let key = keys::generate()?;
    let cmd = ControlCommand::CreateTenant {
        name: name.to_owned(),
        key_sha256: keys::sha256(&key),
    };
    write(data_dir, node, cmd)
        .await
        .map_err(|e| e.context(format!("tenant {name} was not created")))?;
    println!("tenant {name} created; its API key (shown only now):");
    println!("{key}");
    Ok(())
}

/// Reserves `mu_per_min` of `model` for `name` (0 removes the reservation).
pub async fn reserve(
    data_dir: &Path,
    node: Option<SocketAddr>,
    name: &str,
    model: &str,
    mu_per_min: f64,
) -> Result<()> {
    if !(mu_per_min.is_finite() && mu_per_min >= 0.0) {
        bail!("--mu-per-min must be a non-negative number, got {mu_per_min}");
    }
    let cmd = if mu_per_min == 0.0 {
        ControlCommand::RemoveReservation {
            tenant: name.to_owned(),
            model: model.to_owned(),
        }
    } else {
        ControlCommand::SetReservation {
            tenant: name.to_owned(),
            model: model.to_owned(),
            mu_per_min,
        }
    };
    write(data_dir, node, cmd)
        .await
        .map_err(|e| e.context(format!("the reservation of {name} was refused")))?;
    println!("tenant {name} reserves {mu_per_min} MU/min of {model}");
    Ok(())
}

/// Bounds the replicas (of each model) `name`'s requests may reach: its blast radius
/// (0 removes the bound).
pub async fn limit(
    data_dir: &Path,
    node: Option<SocketAddr>,
    name: &str,
    max_replicas: u32,
) -> Result<()> {
    let cmd = ControlCommand::SetBlastRadius {
        tenant: name.to_owned(),
        replicas: max_replicas,
    };
    write(data_dir, node, cmd)
        .await
        .map_err(|e| e.context(format!("the blast radius of {name} was refused")))?;
    if max_replicas == 0 {
        println!("tenant {name} may reach every replica");
    } else {
        println!("tenant {name} may reach at most {max_replicas} replicas of a model");
    }
    Ok(())
}

pub async fn remove(data_dir: &Path, node: Option<SocketAddr>, name: &str) -> Result<()> {
    write(
        data_dir,
        node,
        ControlCommand::RemoveTenant(name.to_owned()),
    )
    .await?;
    println!("tenant {name} removed");
    Ok(())
}

pub async fn list(data_dir: &Path, node: Option<SocketAddr>, json: bool) -> Result<()> {
    let s = fetch_status(data_dir, node).await?;
    let rows: Vec<serde_json::Value> = s
        .tenants
        .iter()
        .map(|t| {
            serde_json::json!({
                "name": t,
                "reservations": s.reservations.get(t).cloned().unwrap_or_default(),
                "max_replicas": s.blast_radius.get(t),
            })
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<24} {:<13} reservations (MU/min)",
        "tenant", "max replicas"
    );
    for t in &s.tenants {
        let res = s
            .reservations
            .get(t)
            .map(|m| {
                m.iter()
                    .map(|(model, mu)| format!("{model}: {mu}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_else(|| "-".to_owned());
        let radius = s
            .blast_radius
            .get(t)
            .map_or_else(|| "all".to_owned(), u32::to_string);
        println!("{t:<24} {radius:<13} {res}");
    }
    Ok(())
}
