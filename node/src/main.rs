//! `sluice`: one binary per host — the node, the simulated replica it launches, and the
//! tools around them. A thin shell: it parses the command line (`args.rs`) and calls the
//! `sluice_node` library.

mod args;

use anyhow::Result;
use args::*;
use clap::Parser;
use sluice_node::error_line::one_line;
use sluice_node::server::{shutdown_signal, Listeners, Node};
use sluice_node::{cluster, config, policies, replica, tenants};
use std::io::Write;
use std::net::SocketAddr;

/// The line the node prints on stdout once its front door is listening.
pub const NODE_READY_PREFIX: &str = "sluice node listening on ";

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line naming the problem and its causes, never a backtrace.
            eprintln!("error: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Command::Sim(args) = &cli.command {
        // Pure computation: no runtime, no logging noise on stdout.
        return policies::sim(args);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Node(NodeCommand::Start(a)) => node_start(a).await,
            Command::Cluster(ClusterCommand::Init { data_dir, name }) => {
                cluster::cli::init(&data_dir, &name)
            }
            Command::Cluster(ClusterCommand::Status {
                node,
                data_dir,
                json,
            }) => cluster::cli::status(&data_dir, node, json).await,
            Command::Cluster(ClusterCommand::Leave { data_dir, node }) => {
                cluster::cli::leave(&data_dir, node).await
            }
            Command::Tenant(TenantCommand::Create { name, reach }) => {
                tenants::cli::create(&reach.data_dir, reach.node, &name).await
            }
            Command::Tenant(TenantCommand::Reserve {
                name,
                model,
                mu_per_min,
                reach,
            }) => {
                let model =
                    model.unwrap_or_else(|| sluice_actors::Profile::default_profile().model);
                tenants::cli::reserve(&reach.data_dir, reach.node, &name, &model, mu_per_min).await
            }
            Command::Tenant(TenantCommand::Limit {
                name,
                max_replicas,
                reach,
            }) => tenants::cli::limit(&reach.data_dir, reach.node, &name, max_replicas).await,
            Command::Tenant(TenantCommand::List { json, reach }) => {
                tenants::cli::list(&reach.data_dir, reach.node, json).await
            }
            Command::Tenant(TenantCommand::Remove { name, reach }) => {
                tenants::cli::remove(&reach.data_dir, reach.node, &name).await
            }
            Command::Cluster(ClusterCommand::Isolate {
                from,
                data_dir,
                node,
            }) => cluster::cli::isolate(&data_dir, node, from).await,
            Command::Cluster(ClusterCommand::Drain {
                replica,
                data_dir,
                node,
            }) => cluster::cli::drain(&data_dir, node, replica).await,
            Command::Cluster(ClusterCommand::Remove { id, data_dir, node }) => {
                cluster::cli::remove(&data_dir, node, id).await
            }
            Command::Cluster(ClusterCommand::Token(TokenCommand::Create { id, reach })) => {
                cluster::cli::token_create(&reach.data_dir, reach.node, id).await
            }
            Command::Cluster(ClusterCommand::Token(TokenCommand::Revoke { id, reach })) => {
                cluster::cli::token_revoke(&reach.data_dir, reach.node, &id).await
            }
            Command::Cluster(ClusterCommand::Token(TokenCommand::List { reach })) => {
                cluster::cli::token_list(&reach.data_dir, reach.node).await
            }
            Command::Cluster(ClusterCommand::RotateCa { reach }) => {
                cluster::cli::rotate_ca(&reach.data_dir, reach.node).await
            }
            Command::Sim(_) => Ok(()),
            Command::Loadgen(a) => sluice_loadgen::cli_main(a).await,
            Command::Calibrate(a) => sluice_loadgen::calibrate::cli_main(a).await,
            Command::Chaos(ChaosCommand::Drill(a)) => sluice_chaos::drill::cli_main(a).await,
            Command::Replica(ReplicaCommand::Sim(a)) => {
                replica::run(replica::SimArgs {
                    host: a.host,
                    port: a.port,
                    profile: a.profile,
                    model: a.model,
                    time_scale: a.time_scale,
                    seed: a.seed,
                    poison: a.poison,
                })
                .await
            }
        }
    })
}

async fn node_start(a: StartArgs) -> Result<()> {
    let cluster_args = match &a.data_dir {
        Some(dir) => Some(cluster::ClusterArgs {
            data_dir: dir.clone(),
            listen: a
                .listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7946))),
            rack: a.rack.clone().unwrap_or_else(|| "rack-0".to_owned()),
            join: a.join,
            token: a.token.clone(),
            load_share: std::time::Duration::from_millis(a.load_share_ms),
        }),
        None => {
            if a.listen.is_some() || a.join.is_some() || a.token.is_some() || a.rack.is_some() {
                anyhow::bail!(
                    "--listen, --rack, --join and --token need --data-dir (cluster mode)"
                );
            }
            None
        }
    };
    let overrides = config::Overrides {
        http: a.http,
        replicas: a.replicas,
        gpus: a.gpus,
        replica_urls: a.replica_urls,
        profile: a.profile,
        profile_dir: a.profile_dir,
        time_scale: a.time_scale,
        model: a.model,
        cluster: cluster_args.is_some(),
    };
    let cfg = config::NodeConfig::load(a.config.as_deref(), overrides)?;
    if cfg.autoscaler.is_some() && cluster_args.is_none() {
        anyhow::bail!(
            "the [autoscaler] runs on the cluster's leader: start the node with --data-dir (cluster mode)"
        );
    }
    // Bind first: a busy port should fail before any replica starts.
    let listeners = Listeners::bind(&cfg, cluster_args.as_ref()).await?;
    let node = Node::start(cfg, cluster_args, listeners, shutdown_signal()).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{NODE_READY_PREFIX}http://{}", node.http_addr())?;
        out.flush()?;
    }
    node.wait().await
}
