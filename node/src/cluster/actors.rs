//! The cluster side's actors: the router's view of the control state, membership,
//! load sharing and reporting on every node, and the leader's assigner and autoscaler,
//! which run only while this node leads.

use super::call::{self, Backoff};
use super::handler::{Membership, NodeHandler};
use super::raft_net::QuicRaft;
use super::rpc::{self, LoadRpc};
use super::{become_member, register_replicas, ClusterNode};
use crate::error_line::one_line;
use crate::supervisor::restart::RestartPolicy;
use crate::tree::{every, ticked, ChildSpec, Duty, Turn};
use ractor::ActorProcessingErr;
use sluice_actors::slice::ReplicaId;
use sluice_raft::{ControlCommand, ControlPlane, ControlState, NodeInfo, ReplicaHealth};
use sluice_transport::Client;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

/// How long a load report may take to reach the leader.
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// A node keeps asking to become a member (across membership's turns) this way.
const JOIN_UP: Backoff = Backoff {
    first: Duration::from_millis(300),
    max: Duration::from_secs(5),
    give_up_after: Duration::MAX,
};

/// How often leadership is looked at: the leader's actors start this soon after an
/// election.
const LEADERSHIP_EVERY: Duration = Duration::from_millis(100);

/// Waits for the control state to change, or a second (a turn that found nothing to do
/// may find something now), or the actor's stop. A closed channel means Raft is gone:
/// the duty is over.
pub(crate) async fn next_change(rx: &mut watch::Receiver<Arc<ControlState>>) -> Turn {
    match crate::tree::bounded(rx.changed()).await {
        Some(Err(_)) => Turn::Done,
        _ => Turn::Again,
    }
}

/// The router actor's control side: every change of the control state becomes the
/// fleet and tenants the front door reads.
struct ControlView {
    handler: Arc<NodeHandler>,
    rx: watch::Receiver<Arc<ControlState>>,
}

impl Duty for ControlView {
    async fn turn(&mut self) -> Result<Turn, ActorProcessingErr> {
        let state = self.rx.borrow_and_update().clone();
        self.handler.apply_control(&state);
        Ok(next_change(&mut self.rx).await)
    }
}

/// The leader's assigner: a repair as soon as the registry changes, a rebalancing
/// round on the routers' load every period.
struct AssignerRounds {
    handler: Arc<NodeHandler>,
    rx: watch::Receiver<Arc<ControlState>>,
    next_round: Instant,
}

impl Duty for AssignerRounds {
    async fn turn(&mut self) -> Result<Turn, ActorProcessingErr> {
        self.rx.borrow_and_update();
        let round = Instant::now() >= self.next_round;
        if round {
            self.next_round = Instant::now() + self.handler.round_period();
        }
        if let Err(e) = self.handler.assign(round).await {
            tracing::warn!(error = %e, "assigner round not committed");
        }
        Ok(next_change(&mut self.rx).await)
    }
}

/// Becoming a full member: recorded in the control state, counted by Raft, replicas
/// registered. Needs a quorum, so it is retried with backoff; the front door does not
/// wait for it (with no leader it routes on the last state it has).
struct JoinUp {
    id: u64,
    cp: ControlPlane<QuicRaft>,
    client: Arc<Client>,
    handler: Arc<NodeHandler>,
    me: NodeInfo,
    peer: Option<SocketAddr>,
    urls: HashMap<ReplicaId, String>,
    serving: HashSet<ReplicaId>,
    /// Each local replica's model and capacity.
    serves: HashMap<ReplicaId, (String, f64)>,
    tls: std::path::PathBuf,
    failures: u32,
}

impl Duty for JoinUp {
    async fn turn(&mut self) -> Result<Turn, ActorProcessingErr> {
        let r = async {
            become_member(
                self.id,
                &self.cp,
                &self.client,
                &self.handler,
                self.me.clone(),
                self.peer,
            )
            .await?;
            register_replicas(self.id, &self.cp, &self.urls, &self.serving, &self.serves).await?;
            super::handler::publish_authority(&self.tls, &self.cp).await
        }
        .await;
        match r {
            Ok(()) => Ok(Turn::Done),
            Err(e) => {
                self.failures += 1;
                let wait = JOIN_UP.delay(self.failures);
                tracing::warn!(error = %one_line(&e), ?wait, "not yet a full member; retrying");
                tokio::time::sleep(wait).await;
                Ok(Turn::Again)
            }
        }
    }
}

/// Puts this node's engines in service once they answer: one that was still loading at
/// start is registered `Starting` (`register_replicas`), so no router sends to it, and
/// becomes `Healthy` when it first lists its models.
struct EngineReadiness {
    id: u64,
    cp: ControlPlane<QuicRaft>,
    rx: watch::Receiver<Arc<ControlState>>,
    urls: HashMap<ReplicaId, String>,
    http: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
}

/// How often a loading engine is asked whether it serves.
const READINESS_EVERY: Duration = Duration::from_secs(1);

impl Duty for EngineReadiness {
    async fn turn(&mut self) -> Result<Turn, ActorProcessingErr> {
        let state = self.rx.borrow_and_update().clone();
        let mut loading: Vec<(ReplicaId, &String)> = self
            .urls
            .iter()
            .filter(|(r, _)| {
                state
                    .replica(**r)
                    .is_some_and(|i| i.node == self.id && i.health == ReplicaHealth::Starting)
            })
            .map(|(r, u)| (*r, u))
            .collect();
        if loading.is_empty() {
            return Ok(next_change(&mut self.rx).await);
        }
        loading.sort();
        for (replica, url) in loading {
            if crate::front::models::fetch(&self.http, url).await.is_none() {
                continue;
            }
            let ready = ControlCommand::ReplicaReady {
                replica,
                endpoint: url.clone(),
            };
            match self.cp.write(ready).await {
                Ok(r) if !r.is_rejected() => {
                    tracing::info!(replica = replica.0, %url, "engine answers: in service")
                }
                Ok(r) => tracing::debug!(replica = replica.0, ?r, "engine readiness not taken"),
                Err(e) => {
                    tracing::debug!(replica = replica.0, error = %e, "engine readiness not committed")
                }
            }
        }
        tokio::time::sleep(READINESS_EVERY).await;
        Ok(Turn::Again)
    }
}

/// The gossip actor's duty: this router's in-flight load to every other node every
/// period, so that a burst placed by one router is seen by the others within a fraction
/// of a second. The sends in flight are the actor's: they end with it.
struct Gossip {
    id: u64,
    cp: ControlPlane<QuicRaft>,
    client: Arc<Client>,
    handler: Arc<NodeHandler>,
    every: Duration,
    tick: tokio::time::Interval,
    sends: tokio::task::JoinSet<()>,
}

impl Duty for Gossip {
    async fn turn(&mut self) -> Result<Turn, ActorProcessingErr> {
        while self.sends.try_join_next().is_some() {}
        if !ticked(&mut self.tick).await {
            return Ok(Turn::Again);
        }
        let Some(fleets) = self.handler.front() else {
            return Ok(Turn::Again);
        };
        let mut gossip = rpc::Gossip {
            loads: Vec::new(),
            demand: Vec::new(),
            implicated: Vec::new(),
            stalled: Vec::new(),
            heard: Vec::new(),
        };
        for (model, front) in fleets.named() {
            gossip.loads.extend(front.own_load());
            gossip.demand.push((model.to_owned(), front.own_demand()));
            gossip.implicated.extend(front.announced_implications());
            gossip.stalled.extend(front.announced_stalls());
            gossip.heard.extend(front.announced_heard());
        }
        let report = LoadRpc::Gossip(gossip);
        let state = self.cp.state().borrow().clone();
        for n in state.nodes().values().filter(|n| n.id != self.id) {
            let Ok(addr) = n.quic_addr.parse::<SocketAddr>() else {
                continue;
            };
            let (client, report, limit) = (self.client.clone(), report.clone(), self.every * 2);
            self.sends.spawn(async move {
                let _ = call::load(&client, addr, report, limit).await;
            });
        }
        Ok(Turn::Again)
    }
}

/// Reports this router's measured load to the leader; the report also tells the leader
/// the node is live.
async fn report_once(client: &Client, handler: &NodeHandler) {
    let Some(fleets) = handler.front() else {
        return;
    };
    for (model, state) in fleets.named() {
        let report = state.take_load();
        match handler.leader_addr() {
            Some(Membership::Me) => handler.add_load(model, &report),
            Some(Membership::At(addr)) => {
                let rpc = LoadRpc::Report {
                    model: model.to_owned(),
                    report,
                };
                if let Err(e) = call::load(client, addr, rpc, REPORT_TIMEOUT).await {
                    tracing::debug!(error = %e, "load report not delivered");
                }
            }
            None => {}
        }
    }
}

impl ClusterNode {
    /// The cluster side's actors for the node's tree.
    pub fn actors(&self, policy: RestartPolicy) -> Vec<ChildSpec> {
        let s = &self.setup;
        let handler = self.handler.clone();
        let (leading_tx, leading) = watch::channel(false);
        let mut actors = vec![
            ChildSpec::duty("control-view", {
                let (handler, cp) = (handler.clone(), self.cp.clone());
                move || ControlView {
                    handler: handler.clone(),
                    rx: cp.state(),
                }
            }),
            ChildSpec::duty("membership", {
                let (cp, client, handler, s) = (
                    self.cp.clone(),
                    self.client.clone(),
                    handler.clone(),
                    s.clone(),
                );
                let id = self.id;
                move || JoinUp {
                    id,
                    cp: cp.clone(),
                    client: client.clone(),
                    handler: handler.clone(),
                    me: s.me.clone(),
                    peer: s.join,
                    urls: s.urls.clone(),
                    serving: s.serving.clone(),
                    serves: s.serves.clone(),
                    tls: s.tls.clone(),
                    failures: 0,
                }
            }),
            ChildSpec::duty("leadership", {
                let handler = handler.clone();
                let leading_tx = Arc::new(leading_tx);
                move || {
                    let (handler, leading_tx) = (handler.clone(), leading_tx.clone());
                    every(LEADERSHIP_EVERY, MissedTickBehavior::Skip, move || {
                        let now = handler.is_leader();
                        leading_tx.send_if_modified(|was| std::mem::replace(was, now) != now);
                        std::future::ready(())
                    })
                }
            }),
            ChildSpec::duty("load-report", {
                let (client, handler) = (self.client.clone(), handler.clone());
                let period = s.report_every;
                move || {
                    let (client, handler) = (client.clone(), handler.clone());
                    every(period, MissedTickBehavior::Delay, move || {
                        let (client, handler) = (client.clone(), handler.clone());
                        async move { report_once(&client, &handler).await }
                    })
                }
            }),
            ChildSpec::duty("engine-readiness", {
                let (cp, s) = (self.cp.clone(), s.clone());
                let id = self.id;
                move || EngineReadiness {
                    id,
                    cp: cp.clone(),
                    rx: cp.state(),
                    urls: s.urls.clone(),
                    http: crate::front::http_client(Duration::from_secs(1)),
                }
            }),
            ChildSpec::duty("cert-renewal", {
                let (cp, endpoint, handler, s) = (
                    self.cp.clone(),
                    self.endpoint.clone(),
                    handler.clone(),
                    s.clone(),
                );
                let id = self.id;
                move || super::certs::CertRenewal {
                    id,
                    cp: cp.clone(),
                    endpoint: endpoint.clone(),
                    handler: handler.clone(),
                    ca: s.ca.clone(),
                    tls: s.tls.clone(),
                    lifetime: s.cert_lifetime,
                    current: None,
                    retry_at: None,
                }
            }),
        ];
        if !s.load_share.is_zero() {
            let (cp, client, handler) = (self.cp.clone(), self.client.clone(), handler.clone());
            let (id, period) = (self.id, s.load_share);
            actors.push(ChildSpec::duty("gossip", move || {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
                Gossip {
                    id,
                    cp: cp.clone(),
                    client: client.clone(),
                    handler: handler.clone(),
                    every: period,
                    tick,
                    sends: tokio::task::JoinSet::new(),
                }
            }));
        }
        let mut leader = vec![
            ChildSpec::duty("assigner", {
                let (handler, cp) = (handler.clone(), self.cp.clone());
                move || AssignerRounds {
                    handler: handler.clone(),
                    rx: cp.state(),
                    next_round: Instant::now() + handler.round_period(),
                }
            }),
            ChildSpec::duty("liveness", {
                // A router is heard at each load report and, more often, each gossip.
                let heard_every = match s.load_share.is_zero() {
                    true => s.report_every,
                    false => s.load_share.min(s.report_every),
                };
                let (handler, gossip) = (handler.clone(), !s.load_share.is_zero());
                move || super::liveness::Liveness::new(handler.clone(), heard_every, gossip)
            }),
        ];
        if let Some(cfg) = s.autoscaler.clone() {
            let handler = handler.clone();
            let (capacities, start_timeout, report_every) =
                (s.capacities.clone(), s.start_timeout, s.report_every);
            leader.push(ChildSpec::duty("autoscaler", move || {
                super::scale::Autoscaler::new(
                    handler.clone(),
                    cfg.clone(),
                    capacities.clone(),
                    start_timeout,
                    report_every,
                )
            }));
        }
        actors.push(ChildSpec::group("leader", leader, policy, Some(leading)));
        actors
    }
}
