//! A node's identity: its private key and its CA-signed certificate, whose only subject
//! alternative name is the DNS name `node-<id>.sluice`. The node id is read back from
//! the peer's certificate after every handshake, so a peer cannot claim to be another
//! node: the id it acts as is the id the CA signed.
//!
//! A node makes its own key and a certificate signing request ([`CertRequest`]); the CA
//! signs the request ([`crate::ClusterCa::sign_csr`]); the key never leaves the node.
//!
//! Files: `node.pem` (the node certificate followed by the CA certificate) and `node.key`
//! (mode 0600).

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::{ca::pem_encode, fsutil, CaCert, ClusterCa, TransportError};

/// File name of the node certificate chain in a data directory.
pub const NODE_CERT_FILE: &str = "node.pem";
/// File name of the node private key in a data directory (mode 0600).
pub const NODE_KEY_FILE: &str = "node.key";

const NODE_NAME_PREFIX: &str = "node-";
const NODE_NAME_SUFFIX: &str = ".sluice";

/// The DNS name that carries `node_id` in a node certificate: `node-<id>.sluice`.
pub fn node_dns_name(node_id: u64) -> String {
    format!("{NODE_NAME_PREFIX}{node_id}{NODE_NAME_SUFFIX}")
}

/// Parses `node-<id>.sluice` (canonical decimal, no sign or leading zeros).
pub fn parse_node_dns_name(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(NODE_NAME_PREFIX)?
        .strip_suffix(NODE_NAME_SUFFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let id: u64 = digits.parse().ok()?;
    (id.to_string() == digits).then_some(id)
}

/// The node id in a certificate's SAN. Exactly one `node-<id>.sluice` name is allowed.
pub fn node_id_from_cert(der: &CertificateDer<'_>) -> Result<u64, TransportError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TransportError::Certificate(format!("peer certificate: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| TransportError::Certificate(format!("peer certificate SAN: {e}")))?
        .ok_or(TransportError::NoNodeId)?;
    let mut ids = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => parse_node_dns_name(dns),
            _ => None,
        });
    match (ids.next(), ids.next()) {
        (Some(id), None) => Ok(id),
        _ => Err(TransportError::NoNodeId),
    }
}

/// Whether `key`'s public key is the one in `cert`.
pub(crate) fn key_matches_cert(
    key: &KeyPair,
    cert: &CertificateDer<'_>,
) -> Result<bool, TransportError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| TransportError::Certificate(format!("certificate: {e}")))?;
    Ok(parsed.public_key().subject_public_key.data.as_ref() == key.public_key_raw())
}

/// Checks that `cert` carries a valid signature by `ca`; returns the end of its validity.
fn signed_by_ca(cert: &CertificateDer<'_>, ca: &CaCert) -> Result<SystemTime, TransportError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| TransportError::Certificate(format!("certificate: {e}")))?;
    let mut signed = false;
    for root in ca.roots() {
        let (_, ca_parsed) = x509_parser::parse_x509_certificate(root)
            .map_err(|e| TransportError::Certificate(format!("CA certificate: {e}")))?;
        signed |= parsed
            .verify_signature(Some(ca_parsed.public_key()))
            .is_ok();
    }
    if !signed {
        return Err(TransportError::Certificate(
            "certificate is not signed by the cluster CA".into(),
        ));
    }
    let end = parsed.validity().not_after.timestamp();
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(end).unwrap_or(0)))
}

/// How long from `now` until a certificate valid until `not_after` is renewed by a node
/// whose certificates live `lifetime`: at two thirds of it (a third left), so that a
/// renewal that fails has time to be tried again; at once when it is already due, or
/// when it outlives `lifetime` (issued under a longer policy, or before one was set).
pub fn renewal_due_in(now: SystemTime, not_after: SystemTime, lifetime: Duration) -> Duration {
    let left = not_after.duration_since(now).unwrap_or(Duration::ZERO);
    if left > lifetime {
        return Duration::ZERO;
    }
    left.saturating_sub(lifetime / 3)
}

/// A fresh key pair and a certificate signing request for it. Send [`Self::csr_pem`] to
/// the CA (directly or by joining); turn the answer into a [`NodeIdentity`] with
/// [`Self::into_identity`].
pub struct CertRequest {
    key: KeyPair,
    csr_pem: String,
}

impl std::fmt::Debug for CertRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertRequest").finish_non_exhaustive()
    }
}

impl CertRequest {
    /// Generates an ECDSA P-256 key and a CSR signed with it.
    pub fn new() -> Result<Self, TransportError> {
        let key = KeyPair::generate()?;
        // The CA decides the names; the request only proves possession of the key.
        let csr = CertificateParams::default().serialize_request(&key)?;
        Ok(CertRequest {
            csr_pem: csr.pem()?,
            key,
        })
    }

    pub fn csr_pem(&self) -> &str {
        &self.csr_pem
    }

    /// Combines the key with the certificate the CA issued for it, after checking the
    /// certificate is for this key, signed by `ca`, and carries a node id.
    pub fn into_identity(
        self,
        cert_pem: &str,
        ca: &CaCert,
    ) -> Result<NodeIdentity, TransportError> {
        NodeIdentity::issued(cert_pem, self.key, ca)
    }
}

/// A node's certificate chain (node certificate, then CA certificate) and private key.
pub struct NodeIdentity {
    node_id: u64,
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
    not_after: SystemTime,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl Clone for NodeIdentity {
    fn clone(&self) -> Self {
        NodeIdentity {
            node_id: self.node_id,
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
            not_after: self.not_after,
        }
    }
}

impl NodeIdentity {
    /// Makes a key and has `ca` sign it for `node_id` in one step: for the node that holds
    /// the CA (the first node of a cluster). Other nodes join instead.
    pub fn generate(ca: &ClusterCa, node_id: u64) -> Result<Self, TransportError> {
        let req = CertRequest::new()?;
        let cert_pem = ca.sign_csr(
            req.csr_pem(),
            node_id,
            crate::ca::DEFAULT_NODE_CERT_LIFETIME,
        )?;
        req.into_identity(&cert_pem, ca.cert())
    }

    /// A certificate request for this node's own key, to renew its certificate: the key
    /// stays, so `node.key` is never rewritten and a crash mid-renewal cannot leave a
    /// certificate that does not match it.
    pub fn renewal_request(&self) -> Result<String, TransportError> {
        let key = self.key_pair()?;
        Ok(CertificateParams::default()
            .serialize_request(&key)?
            .pem()?)
    }

    /// This identity with the certificate the CA issued for [`Self::renewal_request`]:
    /// checked like a first certificate, and for the same node id.
    pub fn renewed(&self, cert_pem: &str, ca: &CaCert) -> Result<NodeIdentity, TransportError> {
        let next = NodeIdentity::issued(cert_pem, self.key_pair()?, ca)?;
        if next.node_id != self.node_id {
            return Err(TransportError::Certificate(format!(
                "the renewed certificate is for node {}, not {}",
                next.node_id, self.node_id
            )));
        }
        Ok(next)
    }

    fn key_pair(&self) -> Result<KeyPair, TransportError> {
        KeyPair::try_from(&self.key)
            .map_err(|e| TransportError::Certificate(format!("this node's key: {e}")))
    }

    /// A certificate just issued for `key`: it must be within its validity period.
    fn issued(cert_pem: &str, key: KeyPair, ca: &CaCert) -> Result<Self, TransportError> {
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| TransportError::Certificate(format!("node certificate PEM: {e}")))?
            .into_owned();
        let valid = x509_parser::parse_x509_certificate(&cert)
            .map_err(|e| TransportError::Certificate(format!("certificate: {e}")))?
            .1
            .validity()
            .is_valid();
        if !valid {
            return Err(TransportError::Certificate(
                "certificate is outside its validity period".into(),
            ));
        }
        NodeIdentity::assemble(vec![cert, ca.der().clone()], key, ca)
    }

    /// Checks the chain against the key and `ca`. An expired certificate is accepted:
    /// a node that was down past its certificate's end must still know who it is, to
    /// renew it ([`Self::not_after`]).
    fn assemble(
        cert_chain: Vec<CertificateDer<'static>>,
        key: KeyPair,
        ca: &CaCert,
    ) -> Result<Self, TransportError> {
        let leaf = cert_chain
            .first()
            .ok_or_else(|| TransportError::Certificate("empty certificate chain".into()))?;
        if !key_matches_cert(&key, leaf)? {
            return Err(TransportError::Certificate(
                "the certificate is not for this node's key".into(),
            ));
        }
        let not_after = signed_by_ca(leaf, ca)?;
        let node_id = node_id_from_cert(leaf)?;
        Ok(NodeIdentity {
            node_id,
            cert_chain,
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            not_after,
        })
    }

    /// Whether `ca` itself (not the CAs it also trusts) signed this certificate.
    pub fn signed_by(&self, ca: &CaCert) -> bool {
        self.cert_chain
            .first()
            .is_some_and(|leaf| signed_by_ca(leaf, &ca.alone()).is_ok())
    }

    /// When the node certificate stops being valid.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The node certificate followed by the CA certificate.
    pub fn cert_chain(&self) -> &[CertificateDer<'static>] {
        &self.cert_chain
    }

    /// The private key, for rustls.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    /// The keys that let a node restarted on the same address end its former process's
    /// connections: the key of its QUIC stateless resets and the key its connection ids
    /// are signed with (a packet for an id this node never signed gets no reset). Both
    /// are derived from its private key, which outlives restarts and renewals, so its
    /// peers get a reset they accept on their next packet and drop the dead connection
    /// at once instead of waiting out the idle timeout.
    pub fn restart_keys(&self) -> (ring::hmac::Key, u64) {
        let reset = self.derived(b"sluice/1 quic stateless reset");
        let cid = self.derived(b"sluice/1 quic connection ids");
        let mut cid_key = [0u8; 8];
        cid_key.copy_from_slice(&cid[..8]);
        (
            ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &reset),
            u64::from_le_bytes(cid_key),
        )
    }

    /// A secret for one `purpose`, derived from the private key (an HKDF extract with
    /// the purpose as salt), so that no two uses share key material.
    fn derived(&self, purpose: &[u8]) -> [u8; 32] {
        let salt = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, purpose);
        let tag = ring::hmac::sign(&salt, self.key.secret_pkcs8_der());
        let mut out = [0u8; 32];
        out.copy_from_slice(&tag.as_ref()[..32]);
        out
    }

    /// Writes `node.pem` and `node.key` (mode 0600) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), TransportError> {
        let chain: String = self
            .cert_chain
            .iter()
            .map(|c| pem_encode("CERTIFICATE", c))
            .collect();
        fsutil::write(dir, NODE_CERT_FILE, chain.as_bytes(), false)?;
        let key_pem = pem_encode("PRIVATE KEY", self.key.secret_pkcs8_der());
        fsutil::write(dir, NODE_KEY_FILE, key_pem.as_bytes(), true).map(drop)
    }

    /// Reads `node.pem` and `node.key` from `dir` and checks them against `ca`.
    pub fn load(dir: &Path, ca: &CaCert) -> Result<Self, TransportError> {
        let chain_pem = fsutil::read(dir, NODE_CERT_FILE, false)?;
        let key_pem = fsutil::read(dir, NODE_KEY_FILE, true)?;
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .map(|c| c.map(|c| c.into_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TransportError::Certificate(format!("{NODE_CERT_FILE}: {e}")))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| TransportError::Certificate(format!("{NODE_KEY_FILE}: {e}")))?;
        Self::assemble(chain, key, ca)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_parse_canonically() {
        assert_eq!(parse_node_dns_name(&node_dns_name(0)), Some(0));
        assert_eq!(
            parse_node_dns_name(&node_dns_name(u64::MAX)),
            Some(u64::MAX)
        );
        for bad in [
            "node-.sluice",
            "node-01.sluice",
            "node-+1.sluice",
            "node-1.sluice.evil",
            "node-18446744073709551616.sluice",
            "xnode-1.sluice",
        ] {
            assert_eq!(parse_node_dns_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn identity_round_trip_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate("t").unwrap();
        let id = NodeIdentity::generate(&ca, 42).unwrap();
        assert_eq!(id.node_id(), 42);
        assert_eq!(node_id_from_cert(&id.cert_chain()[0]).unwrap(), 42);
        id.save(dir.path()).unwrap();
        let back = NodeIdentity::load(dir.path(), ca.cert()).unwrap();
        assert_eq!(back.node_id(), 42);
        assert_eq!(back.cert_chain(), id.cert_chain());
        assert_eq!(id.clone().node_id(), 42);

        // Against another CA it does not load.
        let other = ClusterCa::generate("other").unwrap();
        assert!(NodeIdentity::load(dir.path(), other.cert()).is_err());

        // A certificate for someone else's key is refused.
        let req = CertRequest::new().unwrap();
        let stolen = ca
            .sign_csr(
                CertRequest::new().unwrap().csr_pem(),
                5,
                crate::ca::DEFAULT_NODE_CERT_LIFETIME,
            )
            .unwrap();
        assert!(req.into_identity(&stolen, ca.cert()).is_err());
    }

    #[test]
    fn renewal_is_due_with_a_third_left_or_when_the_certificate_outlives_the_policy() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(86_400);
        // Just issued for a day: due in two thirds of a day.
        assert_eq!(renewal_due_in(t0, t0 + day, day), day * 2 / 3);
        // A third left, or less, or expired: now.
        assert_eq!(renewal_due_in(t0, t0 + day / 3, day), Duration::ZERO);
        assert_eq!(renewal_due_in(t0 + day, t0, day), Duration::ZERO);
        // Issued for five years under an older policy: now.
        assert_eq!(renewal_due_in(t0, t0 + day * 1825, day), Duration::ZERO);
        // Short-lived: 30 s certificates are renewed at 20 s.
        let s30 = Duration::from_secs(30);
        assert_eq!(renewal_due_in(t0, t0 + s30, s30), Duration::from_secs(20));
    }

    #[test]
    fn a_renewed_identity_keeps_its_key_and_id_and_an_expired_one_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate("t").unwrap();
        // Issued with no time left: expired at once (as after a long outage).
        let req = CertRequest::new().unwrap();
        let pem = ca.sign_csr(req.csr_pem(), 7, Duration::ZERO).unwrap();
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .into_owned();
        let old =
            NodeIdentity::assemble(vec![der, ca.cert().der().clone()], req.key, ca.cert()).unwrap();
        old.save(dir.path()).unwrap();
        let loaded = NodeIdentity::load(dir.path(), ca.cert()).unwrap();
        assert_eq!(loaded.node_id(), 7);
        assert!(loaded.not_after() <= SystemTime::now());

        let hour = Duration::from_secs(3600);
        let csr = loaded.renewal_request().unwrap();
        let new = loaded
            .renewed(&ca.sign_csr(&csr, 7, hour).unwrap(), ca.cert())
            .unwrap();
        assert_eq!(new.node_id(), 7);
        assert!(new.not_after() > SystemTime::now() + hour / 2);
        assert_ne!(new.cert_chain()[0], loaded.cert_chain()[0]);
        assert_eq!(
            new.private_key().secret_der(),
            loaded.private_key().secret_der()
        );
        // A certificate for another node id, or from another CA, is refused.
        let other = loaded.renewed(&ca.sign_csr(&csr, 8, hour).unwrap(), ca.cert());
        assert!(other.unwrap_err().to_string().contains("node 8"));
        let stranger = ClusterCa::generate("other").unwrap();
        assert!(loaded
            .renewed(&stranger.sign_csr(&csr, 7, hour).unwrap(), ca.cert())
            .is_err());
        // An expired certificate is not accepted as newly issued (certificate times
        // have whole seconds: past a second, the one issued with no time left is).
        std::thread::sleep(Duration::from_millis(1100));
        let stale = loaded.renewed(&pem, ca.cert()).unwrap_err();
        assert!(stale.to_string().contains("validity"), "{stale}");
    }
}
