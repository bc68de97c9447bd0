//! `sluice`: one binary per host — the node (router and front door, and later the
//! control-plane actors) and the simulated replica it launches.

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use sluice_node::server::{shutdown_signal, Listeners, Node};
use sluice_node::{cluster, config, policies, replica, tenants};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// The line the node prints on stdout once its front door is listening.
pub const NODE_READY_PREFIX: &str = "sluice node listening on ";

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "LLM inference router and fleet control plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Run an engine replica.
    #[command(subcommand)]
    Replica(ReplicaCommand),
    /// Create, inspect and shrink a cluster of nodes.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Tenants: API keys and capacity reservations.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Simulate a fleet in virtual time: replay a trace under routing policies and compare them.
    Sim(sluice_sim::cli::SimArgs),
    /// Drive load at an OpenAI-compatible endpoint and report throughput and latency.
    Loadgen(sluice_loadgen::LoadgenArgs),
    /// Measure an OpenAI-compatible engine and fit a profile's MU coefficients and capacity.
    Calibrate(sluice_loadgen::calibrate::CalibrateArgs),
    /// Chaos drills on a local cluster of real node processes.
    #[command(subcommand)]
    Chaos(ChaosCommand),
}

#[derive(Subcommand)]
enum ChaosCommand {
    /// Start a local cluster, drive load through it, inject a scenario's faults, check
    /// that no request was lost and that every node ends with the same committed state.
    Drill(sluice_chaos::drill::DrillArgs),
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Start a node: the OpenAI front door over simulated replicas (the default) or
    /// over already-running engines given with --replica.
    Start(StartArgs),
}

#[derive(Args)]
struct StartArgs {
    /// Address of the OpenAI-compatible front door [default: 127.0.0.1:8080].
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Replicas to launch at start [default: 4, or --gpus when given].
    #[arg(long)]
    replicas: Option<usize>,
    /// GPUs this host owns: one engine replica per GPU at most. In a cluster with the
    /// autoscaler on, the leader places replicas on free GPUs [default: --replicas].
    #[arg(long)]
    gpus: Option<usize>,
    /// An already-running OpenAI-compatible engine to front (repeatable); no
    /// simulated replicas are launched when given.
    #[arg(long = "replica", value_name = "URL")]
    replica_urls: Vec<String>,
    /// A folder of calibrated profiles: the one for the model the engines serve prices
    /// it (unless --profile is given).
    #[arg(long)]
    profile_dir: Option<PathBuf>,
    /// The model to serve, overriding what the engines list on /v1/models (rarely
    /// needed: the node asks them) [default: learned from the engines].
    #[arg(long)]
    model: Option<String>,
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Profile TOML (model units and engine model) [default: the embedded Llama-3.1-8B / H100 profile].
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Wall-clock seconds per simulated second for launched replicas; 0 = zero-delay.
    #[arg(long)]
    time_scale: Option<f64>,
    /// Cluster mode: this node's data directory (identity, Raft log). Without it the
    /// node runs alone.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Cluster mode: address of this node's QUIC endpoint [default: 127.0.0.1:7946].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Cluster mode: this node's rack (failure domain) [default: rack-0].
    #[arg(long)]
    rack: Option<String>,
    /// Cluster mode: a member's QUIC address to join through (first start only).
    #[arg(long)]
    join: Option<SocketAddr>,
    /// Cluster mode: the join token printed by `sluice cluster init`.
    #[arg(long)]
    token: Option<String>,
    /// Cluster mode: how often this router shares its in-flight load per replica with
    /// the other nodes, in ms; 0 turns sharing off.
    #[arg(long, default_value_t = 200)]
    load_share_ms: u64,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Create a cluster: its CA, the first node's identity and a join token.
    Init {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value = "sluice")]
        name: String,
    },
    /// Show nodes, roles, leader, racks, replicas and the assignment generation.
    Status {
        /// A node's QUIC address [default: the one of --data-dir].
        #[arg(long)]
        node: Option<SocketAddr>,
        /// A node's data directory, for credentials.
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// The node of --data-dir leaves the cluster.
    Leave {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        node: Option<SocketAddr>,
    },
    /// Chaos drills: make a node drop all cluster traffic to and from the given node
    /// ids (none: heal).
    Isolate {
        #[arg(long, value_delimiter = ',')]
        from: Vec<u64>,
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        node: Option<SocketAddr>,
    },
    /// Drain a replica: no new requests, in-flight ones finish, then it is stopped and
    /// removed (with the autoscaler on, it replaces the capacity as it sees fit).
    Drain {
        /// The replica id (as `cluster status` lists it).
        replica: u64,
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        node: Option<SocketAddr>,
    },
    /// Remove another node from the cluster.
    Remove {
        /// The node id to remove.
        id: u64,
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        node: Option<SocketAddr>,
    },
}

/// Where a command reaches the cluster: a node's data directory (credentials, and the
/// node's address unless --node says otherwise).
#[derive(Args)]
struct Reach {
    #[arg(long)]
    data_dir: PathBuf,
    /// A node's QUIC address [default: the one of --data-dir].
    #[arg(long)]
    node: Option<SocketAddr>,
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant and print its API key (shown only once).
    Create {
        name: String,
        #[command(flatten)]
        reach: Reach,
    },
    /// Reserve MU per minute of a model for a tenant (0 removes the reservation).
    Reserve {
        name: String,
        /// [default: the embedded profile's model]
        #[arg(long)]
        model: Option<String>,
        #[arg(long)]
        mu_per_min: f64,
        #[command(flatten)]
        reach: Reach,
    },
    /// Bound the replicas (of each model) a tenant's requests may reach: its blast
    /// radius, so that its flood or a request that breaks engines touches at most that
    /// many (0 removes the bound).
    Limit {
        name: String,
        #[arg(long)]
        max_replicas: u32,
        #[command(flatten)]
        reach: Reach,
    },
    /// List tenants, their blast radius and their reservations.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        reach: Reach,
    },
    /// Remove a tenant and its reservations (its key stops working).
    Remove {
        name: String,
        #[command(flatten)]
        reach: Reach,
    },
}

#[derive(Subcommand)]
enum ReplicaCommand {
    /// A simulated GPU engine serving the OpenAI API (vLLM-compatible).
    Sim(SimArgs),
}

#[derive(Args)]
struct SimArgs {
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to listen on; 0 picks a free one (printed on stdout).
    #[arg(long)]
    port: u16,
    /// Profile TOML [default: the embedded Llama-3.1-8B / H100 profile].
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Model name to serve [default: the profile's].
    #[arg(long)]
    model: Option<String>,
    /// Wall-clock seconds per simulated second; 0 = zero-delay mode.
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Seed of the engine's deterministic choices (output lengths, error faults).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Fault injection for drills: a request containing this text hangs the engine.
    /// Engines a node launches inherit it from the node's environment.
    #[arg(long, env = "SLUICE_SIM_POISON")]
    poison: Option<String>,
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line naming the problem and its causes, never a backtrace.
            eprintln!("error: {e:#}");
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
        // One replica per GPU unless told otherwise.
        replicas: a.replicas.or(a.gpus),
        gpus: a.gpus,
        replica_urls: a.replica_urls,
        profile: a.profile,
        profile_dir: a.profile_dir,
        time_scale: a.time_scale,
        model: a.model,
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
