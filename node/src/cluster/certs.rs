//! Renewing this node's certificate before it expires. Node certificates are short-lived
//! (`[node] cert_lifetime_s`, a day by default) so that one that leaks, or belongs to a
//! removed node, stops counting soon. Every member holds the cluster's CA in its applied
//! control state (`ClusterAuthority`), so a node renews by signing a request for its own
//! key with it — no peer has to be reachable, which also lets a node that was down past
//! its certificate's end renew from its replayed log and be let back in. A retired node
//! id is never renewed.

use super::handler::NodeHandler;
use super::raft_net::QuicRaft;
use crate::tree::{bounded, Duty, Turn};
use ractor::ActorProcessingErr;
use sluice_raft::{ClusterAuthority, ControlCommand, ControlPlane, ControlState, RotationPhase};
use sluice_transport::identity::renewal_due_in;
use sluice_transport::{CaCert, ClusterCa, Endpoint, NodeIdentity, TransportError};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Why a node's certificate was not renewed.
#[derive(Debug, thiserror::Error)]
pub enum RenewalError {
    #[error("this node has not applied the cluster's CA yet")]
    NoAuthority,
    #[error("node {0} was removed from the cluster: its certificate is not renewed")]
    Retired(u64),
    #[error("the cluster's CA is not the one this node trusts (ca.pem): rotate it first")]
    OtherCa,
    #[error(transparent)]
    Certificate(#[from] TransportError),
}

/// Signs `csr_pem` for `node` with the CA in `state`, valid for `lifetime`: what a
/// member may do for itself, as long as its id was not retired. Returns the certificate
/// and the CA that signed it.
pub fn sign_own(
    state: &ControlState,
    trusted: &CaCert,
    node: u64,
    csr_pem: &str,
    lifetime: Duration,
) -> Result<(String, CaCert), RenewalError> {
    if state.is_retired(node) {
        return Err(RenewalError::Retired(node));
    }
    let authority = state.authority().ok_or(RenewalError::NoAuthority)?;
    let ca = ClusterCa::from_pem(&authority.ca_cert_pem, &authority.ca_key_pem)?;
    if !trusted.trusts(ca.cert()) {
        return Err(RenewalError::OtherCa);
    }
    Ok((ca.sign_csr(csr_pem, node, lifetime)?, ca.cert().clone()))
}

/// The CAs a member trusts under `authority`: the signing CA first, and during a
/// rotation the other one too.
pub fn trust_of(authority: &ClusterAuthority) -> Result<CaCert, TransportError> {
    CaCert::from_pem(&authority.trusted_pem_bundle())
}

/// What a member still has to do for a CA rotation, given what it trusts and which CA
/// signed its certificate: pure, so that the rule is tested apart from the duty.
#[derive(Debug, Clone, PartialEq)]
pub enum RotationStep {
    /// Nothing: no rotation, or this member is done with its phase.
    Nothing,
    /// Trust these CAs (save them, present them).
    Trust(CaCert),
    /// Renew the certificate now, under the signing CA.
    Renew,
    /// Tell the cluster this phase is done here.
    Done(ControlCommand),
}

pub fn rotation_step(
    authority: &ClusterAuthority,
    node: u64,
    trusted: &CaCert,
    signed_by_current: bool,
) -> Result<RotationStep, TransportError> {
    let want = trust_of(authority)?;
    if &want != trusted {
        return Ok(RotationStep::Trust(want));
    }
    let (Some(r), Some(to)) = (&authority.rotation, authority.rotating_to()) else {
        return Ok(RotationStep::Nothing);
    };
    if r.phase == RotationPhase::Renewing && !signed_by_current {
        return Ok(RotationStep::Renew);
    }
    if r.done.contains(&node) {
        return Ok(RotationStep::Nothing);
    }
    Ok(RotationStep::Done(ControlCommand::CaRotationDone {
        node,
        to: to.to_owned(),
        phase: r.phase,
    }))
}

/// How a failed renewal counts: before the control state with the CA is applied (a
/// node's first seconds), a certificate still valid simply waits for it (`false`);
/// anything else is a failure to report (`true`).
pub fn is_failure(e: &RenewalError, not_after: SystemTime, now: SystemTime) -> bool {
    !(matches!(e, RenewalError::NoAuthority) && not_after > now)
}

/// When a failed renewal is tried again: every few seconds, at most a tenth of the
/// lifetime apart.
pub fn retry_after(lifetime: Duration) -> Duration {
    RETRY_EVERY.min(lifetime / 10)
}

/// The renewal actor's duty: waits until this node's certificate is due
/// ([`renewal_due_in`]), then renews it, saves it (`node.pem`; the key stays) and has the
/// endpoint present it from then on. A failed renewal is tried again every few seconds.
pub(super) struct CertRenewal {
    pub id: u64,
    pub cp: ControlPlane<QuicRaft>,
    pub endpoint: Endpoint,
    pub handler: Arc<NodeHandler>,
    pub ca: CaCert,
    pub tls: PathBuf,
    pub lifetime: Duration,
    /// The identity in use; read from `tls` when the duty (re)starts.
    pub current: Option<NodeIdentity>,
    /// Not before this moment after a failure.
    pub retry_at: Option<tokio::time::Instant>,
}

/// How long after a failed renewal it is tried again (see [`retry_after`]).
const RETRY_EVERY: Duration = Duration::from_secs(5);

impl CertRenewal {
    fn renew(&self, current: &NodeIdentity) -> Result<NodeIdentity, RenewalError> {
        let csr = current.renewal_request()?;
        let state = self.cp.state().borrow().clone();
        let (pem, signer) = sign_own(&state, &self.ca, self.id, &csr, self.lifetime)?;
        let next = current.renewed(&pem, &signer)?;
        next.save(&self.tls)?;
        self.endpoint.renew(&next)?;
        Ok(next)
    }

    /// Follows a CA rotation one step (see [`rotation_step`]); whether the certificate
    /// must be renewed now.
    async fn follow_rotation(&mut self, current: &NodeIdentity) -> Result<bool, RenewalError> {
        let state = self.cp.state().borrow().clone();
        let Some(authority) = state.authority() else {
            return Ok(false);
        };
        let signer = CaCert::from_pem(&authority.ca_cert_pem)?;
        match rotation_step(authority, self.id, &self.ca, current.signed_by(&signer))? {
            RotationStep::Nothing => Ok(false),
            RotationStep::Renew => Ok(true),
            RotationStep::Trust(ca) => {
                ca.save(&self.tls)?;
                self.endpoint.present(current, &ca)?;
                tracing::info!(node = self.id, ca = %ca.fingerprint_hex(), trusted = ca.roots().count(), "trusting the cluster's CAs as rotated");
                self.ca = ca;
                Ok(false)
            }
            RotationStep::Done(cmd) => {
                match self.cp.write(cmd).await {
                    Ok(r) if !r.is_rejected() => {
                        tracing::info!(node = self.id, "done with this phase of the CA rotation")
                    }
                    Ok(r) => tracing::warn!(node = self.id, ?r, "CA rotation step refused"),
                    Err(e) => {
                        tracing::debug!(node = self.id, error = %e, "CA rotation step not committed yet")
                    }
                }
                Ok(false)
            }
        }
    }

    fn record(&self, outcome: Option<&'static str>, identity: &NodeIdentity) {
        if let Some(front) = self.handler.front() {
            front
                .first()
                .cert_state(self.id, outcome, seconds_left(identity.not_after()));
        }
    }
}

fn seconds_left(not_after: SystemTime) -> f64 {
    match not_after.duration_since(SystemTime::now()) {
        Ok(left) => left.as_secs_f64(),
        Err(past) => -past.duration().as_secs_f64(),
    }
}

impl Duty for CertRenewal {
    async fn turn(&mut self) -> Result<Turn, ActorProcessingErr> {
        let current = match self.current.take() {
            Some(c) => c,
            None => NodeIdentity::load(&self.tls, &self.ca)?,
        };
        self.record(None, &current);
        let rotate = match self.follow_rotation(&current).await {
            Ok(now) => now,
            Err(e) => {
                tracing::warn!(node = self.id, error = %e, "cannot follow the CA rotation");
                false
            }
        };
        let due = if rotate {
            Duration::ZERO
        } else {
            renewal_due_in(SystemTime::now(), current.not_after(), self.lifetime)
        };
        let waiting = self
            .retry_at
            .map_or(Duration::ZERO, |t| t - tokio::time::Instant::now().min(t));
        let wait = due.max(waiting);
        if !wait.is_zero() {
            self.current = Some(current);
            // A new control state may carry a CA rotation's next step.
            let mut changes = self.cp.state();
            changes.borrow_and_update();
            let _ = bounded(tokio::time::timeout(wait, changes.changed())).await;
            return Ok(Turn::Again);
        }
        match self.renew(&current) {
            Ok(next) => {
                tracing::info!(
                    node = self.id,
                    valid_for_s = seconds_left(next.not_after()),
                    "renewed this node's certificate"
                );
                self.record(Some("renewed"), &next);
                self.retry_at = None;
                self.current = Some(next);
            }
            Err(e) => {
                if is_failure(&e, current.not_after(), SystemTime::now()) {
                    tracing::warn!(node = self.id, error = %e, "cannot renew this node's certificate");
                    self.record(Some("failed"), &current);
                } else {
                    tracing::debug!(node = self.id, error = %e, "certificate renewal waits");
                    self.record(None, &current);
                }
                self.retry_at = Some(tokio::time::Instant::now() + retry_after(self.lifetime));
                self.current = Some(current);
            }
        }
        Ok(Turn::Again)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_raft::{apply, ControlCommand};
    use sluice_transport::CertRequest;

    fn with_ca(ca: &ClusterCa) -> ControlState {
        let mut s = ControlState::default();
        apply(
            &mut s,
            ControlCommand::SetCa {
                ca_cert_pem: ca.cert().pem(),
                ca_key_pem: ca.key_pem(),
                token: ("initial".into(), [7; 32]),
            },
        );
        s
    }

    #[test]
    fn a_member_signs_its_own_request_with_the_replicated_ca_unless_retired() {
        let ca = ClusterCa::generate("t").unwrap();
        let req = CertRequest::new().unwrap();
        let hour = Duration::from_secs(3600);
        // No CA applied yet.
        let err = sign_own(&ControlState::default(), ca.cert(), 3, req.csr_pem(), hour);
        assert!(matches!(err, Err(RenewalError::NoAuthority)), "{err:?}");
        let mut state = with_ca(&ca);
        let pem = sign_own(&state, ca.cert(), 3, req.csr_pem(), hour).unwrap();
        let id = req.into_identity(&pem.0, ca.cert()).unwrap();
        assert_eq!(&pem.1, ca.cert(), "the signer is named");
        assert_eq!(id.node_id(), 3);
        let left = id.not_after().duration_since(SystemTime::now()).unwrap();
        assert!(
            left <= hour && left > hour - Duration::from_secs(60),
            "{left:?}"
        );
        // A CA this node does not trust is not used.
        let other = ClusterCa::generate("other").unwrap();
        let csr = id.renewal_request().unwrap();
        let err = sign_own(&state, other.cert(), 3, &csr, hour);
        assert!(matches!(err, Err(RenewalError::OtherCa)), "{err:?}");
        // Removed: never again.
        apply(&mut state, ControlCommand::RemoveNode(3));
        let err = sign_own(&state, ca.cert(), 3, &csr, hour);
        assert!(matches!(err, Err(RenewalError::Retired(3))), "{err:?}");
    }

    #[test]
    fn only_a_valid_certificate_waiting_for_the_ca_is_not_a_failure() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let (valid, expired) = (now + Duration::from_secs(1), now - Duration::from_secs(1));
        assert!(!is_failure(&RenewalError::NoAuthority, valid, now));
        assert!(is_failure(&RenewalError::NoAuthority, expired, now));
        assert!(is_failure(&RenewalError::Retired(3), valid, now));
        assert!(is_failure(&RenewalError::OtherCa, valid, now));
        assert_eq!(
            retry_after(Duration::from_secs(86_400)),
            Duration::from_secs(5)
        );
        assert_eq!(retry_after(Duration::from_secs(10)), Duration::from_secs(1));
    }

    #[test]
    fn a_member_trusts_then_says_so_then_renews_then_says_so() {
        let old = ClusterCa::generate("old").unwrap();
        let new = ClusterCa::generate("new").unwrap();
        let mut state = with_ca(&old);
        apply(&mut state, ControlCommand::AddNode(member(3)));
        let step = |state: &ControlState, trusted: &CaCert, signed_by_current: bool| {
            rotation_step(state.authority().unwrap(), 3, trusted, signed_by_current).unwrap()
        };
        assert_eq!(step(&state, old.cert(), true), RotationStep::Nothing);
        apply(
            &mut state,
            ControlCommand::BeginCaRotation {
                ca_cert_pem: new.cert().pem(),
                ca_key_pem: new.key_pem(),
            },
        );
        let both = old.cert().trusting(new.cert());
        assert_eq!(
            step(&state, old.cert(), true),
            RotationStep::Trust(both.clone())
        );
        let RotationStep::Done(said) = step(&state, &both, true) else {
            panic!("trusting both, it says so");
        };
        apply(&mut state, said);
        // The only member trusts it: the new CA signs; renew, then say so.
        let both_new_first = new.cert().trusting(old.cert());
        assert_eq!(
            step(&state, &both, true),
            RotationStep::Trust(both_new_first.clone())
        );
        assert_eq!(step(&state, &both_new_first, false), RotationStep::Renew);
        let RotationStep::Done(said) = step(&state, &both_new_first, true) else {
            panic!("renewed, it says so");
        };
        apply(&mut state, said);
        assert_eq!(
            step(&state, &both_new_first, true),
            RotationStep::Trust(new.cert().clone()),
            "the old CA is trusted no more"
        );
        assert_eq!(step(&state, new.cert(), true), RotationStep::Nothing);
        // Signing with the rotated state uses the new CA.
        let req = CertRequest::new().unwrap();
        let (_, signer) = sign_own(
            &state,
            new.cert(),
            3,
            req.csr_pem(),
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(&signer, new.cert());
    }

    fn member(id: u64) -> sluice_raft::NodeInfo {
        sluice_raft::NodeInfo {
            id,
            quic_addr: String::new(),
            http_addr: String::new(),
            rack: "r".into(),
            labels: Default::default(),
            roles: Default::default(),
            gpus: 1,
        }
    }
}
