//! Calling another node by service, with the answer's type checked and the transport's
//! failures sorted into "refused" and "outcome unknown"; and the one retry helper the
//! cluster side uses, driven by those errors.

use super::rpc::{AdminAnswer, AdminRpc, LoadRpc, NodeReply, NodeRpc, RpcError};
use sluice_transport::Client;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

/// How long an admin request may take: a membership change waits for a commit.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(20);

/// An admin request to `addr`.
pub async fn admin(
    client: &Client,
    addr: SocketAddr,
    rpc: AdminRpc,
) -> Result<AdminAnswer, RpcError> {
    match client
        .call::<_, NodeReply>(addr, &NodeRpc::Admin(rpc), ADMIN_TIMEOUT)
        .await?
    {
        NodeReply::Admin(answer) => answer,
        other => Err(unexpected(&other)),
    }
}

/// A load report or gossip to `addr`.
pub async fn load(
    client: &Client,
    addr: SocketAddr,
    rpc: LoadRpc,
    timeout: Duration,
) -> Result<(), RpcError> {
    match client
        .call::<_, NodeReply>(addr, &NodeRpc::Load(rpc), timeout)
        .await?
    {
        NodeReply::Load(answer) => answer,
        other => Err(unexpected(&other)),
    }
}

/// An answer of another service: the peer runs other code than ours, so what it did is
/// not known.
pub fn unexpected(reply: &NodeReply) -> RpcError {
    RpcError::Unknown(format!("unexpected answer {reply:?}"))
}

/// Errors a retry may wait out.
pub trait Transient {
    fn transient(&self) -> bool;
}

impl Transient for RpcError {
    fn transient(&self) -> bool {
        RpcError::transient(self)
    }
}

impl Transient for sluice_raft::ControlPlaneError {
    /// No leader now, a leader busy with a membership change, or a write whose fate is
    /// unknown: asked again only by callers whose writes are idempotent.
    fn transient(&self) -> bool {
        matches!(
            self,
            sluice_raft::ControlPlaneError::NoLeader { .. }
                | sluice_raft::ControlPlaneError::Refused(_)
                | sluice_raft::ControlPlaneError::Indeterminate(_)
        )
    }
}

impl Transient for sluice_transport::TransportError {
    /// The joined-through node could not decide now (leadership moves) or could not be
    /// reached yet.
    fn transient(&self) -> bool {
        use sluice_transport::{JoinRefusal, TransportError as T};
        matches!(
            self,
            T::JoinRefused(JoinRefusal::Unavailable(_))
                | T::Connect { .. }
                | T::Timeout(_)
                | T::ConnectionLost(_)
        )
    }
}

/// How idempotent writes to the control state are asked again while leadership moves.
pub const WRITE_BACKOFF: Backoff = Backoff {
    first: Duration::from_millis(300),
    max: Duration::from_secs(1),
    give_up_after: Duration::from_secs(6),
};

/// Exponential backoff with a deadline.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    /// Stop retrying once this long has passed since the first attempt.
    pub give_up_after: Duration,
}

impl Backoff {
    /// The wait after `attempt` failures (the first wait is after one).
    pub fn delay(&self, attempt: u32) -> Duration {
        self.first
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max)
    }
}

/// Runs `op` until it succeeds, fails with an error that is not [`Transient`], or the
/// backoff's deadline passes (then the last error is returned).
pub async fn retry<T, E, F, Fut>(what: &str, backoff: Backoff, mut op: F) -> Result<T, E>
where
    E: Transient + std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let until = tokio::time::Instant::now() + backoff.give_up_after;
    let mut attempt = 0;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.transient() && tokio::time::Instant::now() < until => {
                attempt += 1;
                let wait = backoff.delay(attempt);
                tracing::info!(what, error = %e, ?wait, "not done yet; asking again");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::rpc::Refusal;
    use std::sync::atomic::{AtomicU32, Ordering};

    const QUICK: Backoff = Backoff {
        first: Duration::from_millis(100),
        max: Duration::from_millis(400),
        give_up_after: Duration::from_secs(5),
    };

    #[test]
    fn delays_double_up_to_the_cap() {
        let d: Vec<u64> = (1..=5).map(|a| QUICK.delay(a).as_millis() as u64).collect();
        assert_eq!(d, vec![100, 200, 400, 400, 400]);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_and_stops_at_a_refusal() {
        let calls = AtomicU32::new(0);
        let r: Result<u32, RpcError> = retry("test", QUICK, || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 => Err(RpcError::Refused(Refusal::NoLeader)),
                1 => Err(RpcError::Unknown("lost".into())),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(r, Ok(2));
        let calls = AtomicU32::new(0);
        let r: Result<(), RpcError> = retry("test", QUICK, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(RpcError::Refused(Refusal::Rejected(
                "no such tenant".into(),
            )))
        })
        .await;
        assert!(matches!(r, Err(RpcError::Refused(Refusal::Rejected(_)))));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "a refusal is final");
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_at_the_deadline_with_the_last_error() {
        let start = tokio::time::Instant::now();
        let r: Result<(), RpcError> = retry("test", QUICK, || async {
            Err(RpcError::Refused(Refusal::NoLeader))
        })
        .await;
        assert_eq!(r, Err(RpcError::Refused(Refusal::NoLeader)));
        let took = start.elapsed();
        assert!(took >= QUICK.give_up_after && took < QUICK.give_up_after + QUICK.max * 2);
    }
}
