//! The command line: every subcommand and flag of `sluice`, as clap parses them.

use clap::{Args, Parser, Subcommand};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "LLM inference router and fleet control plane"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
pub enum ChaosCommand {
    /// Start a local cluster, drive load through it, inject a scenario's faults, check
    /// that no request was lost and that every node ends with the same committed state.
    Drill(sluice_chaos::drill::DrillArgs),
}

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Start a node: the OpenAI front door over simulated replicas (the default: two
    /// models, 4 + 2 replicas) or over already-running engines given with --replica.
    /// Several models: `[[models]]` in --config.
    Start(StartArgs),
}

#[derive(Args)]
pub struct StartArgs {
    /// Address of the OpenAI-compatible front door [default: 127.0.0.1:8080].
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// Replicas of one model to launch at start [default: 4, or --gpus when given;
    /// a standalone node given none of --replicas, --gpus, --replica, --model, --profile
    /// serves two models].
    #[arg(long)]
    pub replicas: Option<usize>,
    /// GPUs this host owns: one engine replica per GPU at most. In a cluster with the
    /// autoscaler on, the leader places replicas on free GPUs [default: --replicas].
    #[arg(long)]
    pub gpus: Option<usize>,
    /// An already-running OpenAI-compatible engine to front (repeatable); no
    /// simulated replicas are launched when given.
    #[arg(long = "replica", value_name = "URL")]
    pub replica_urls: Vec<String>,
    /// A folder of calibrated profiles: the one for the model the engines serve prices
    /// it (unless --profile is given).
    #[arg(long)]
    pub profile_dir: Option<PathBuf>,
    /// The model to serve, overriding what the engines list on /v1/models (rarely
    /// needed: the node asks them) [default: learned from the engines].
    #[arg(long)]
    pub model: Option<String>,
    /// TOML configuration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Profile TOML (model units and engine model) [default: the embedded Llama-3.1-8B / H100 profile].
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Wall-clock seconds per simulated second for launched replicas; 0 = zero-delay.
    #[arg(long)]
    pub time_scale: Option<f64>,
    /// Cluster mode: this node's data directory (identity, Raft log). Without it the
    /// node runs alone.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Cluster mode: address of this node's QUIC endpoint [default: 127.0.0.1:7946].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Cluster mode: this node's rack (failure domain) [default: rack-0].
    #[arg(long)]
    pub rack: Option<String>,
    /// Cluster mode: a member's QUIC address to join through (first start only).
    #[arg(long)]
    pub join: Option<SocketAddr>,
    /// Cluster mode: the join token printed by `sluice cluster init`.
    #[arg(long)]
    pub token: Option<String>,
    /// Cluster mode: how often this router shares its in-flight load per replica with
    /// the other nodes, in ms; 0 turns sharing off.
    #[arg(long, default_value_t = sluice_actors::router::LOAD_SHARE_MS)]
    pub load_share_ms: u64,
}

#[derive(Subcommand)]
pub enum ClusterCommand {
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
    /// Join tokens: any voter admits a node that presents a live one.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Rotate the cluster's CA: a new one is made here and replicated; every member
    /// trusts both, then the new one signs and every member renews under it, then the
    /// old one is trusted no more (`cluster status` shows the progress). Join tokens pin
    /// the CA: create new ones once the rotation is over.
    RotateCa {
        #[command(flatten)]
        reach: Reach,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Make a new join token and print it (shown only now); the old ones stay valid
    /// until revoked — to rotate, create, hand out, then revoke the old one.
    Create {
        /// Its id, for revoking it later [default: one made from the token].
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        reach: Reach,
    },
    /// No node joins with this token any more (nodes that joined with it stay).
    Revoke {
        /// The token's id (`initial` is the one `cluster init` printed).
        id: String,
        #[command(flatten)]
        reach: Reach,
    },
    /// The ids of the live join tokens.
    List {
        #[command(flatten)]
        reach: Reach,
    },
}

/// Where a command reaches the cluster: a node's data directory (credentials, and the
/// node's address unless --node says otherwise).
#[derive(Args)]
pub struct Reach {
    #[arg(long)]
    pub data_dir: PathBuf,
    /// A node's QUIC address [default: the one of --data-dir].
    #[arg(long)]
    pub node: Option<SocketAddr>,
}

#[derive(Subcommand)]
pub enum TenantCommand {
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
pub enum ReplicaCommand {
    /// A simulated GPU engine serving the OpenAI API (vLLM-compatible).
    Sim(SimArgs),
}

#[derive(Args)]
pub struct SimArgs {
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on; 0 picks a free one (printed on stdout).
    #[arg(long)]
    pub port: u16,
    /// Profile TOML [default: the embedded Llama-3.1-8B / H100 profile].
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Model name to serve [default: the profile's].
    #[arg(long)]
    pub model: Option<String>,
    /// Wall-clock seconds per simulated second; 0 = zero-delay mode.
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Seed of the engine's deterministic choices (output lengths, error faults).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fault injection for drills: a request containing this text hangs the engine.
    /// Engines a node launches inherit it from the node's environment.
    #[arg(long, env = "SLUICE_SIM_POISON")]
    pub poison: Option<String>,
}
