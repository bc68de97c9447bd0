//! The cluster certificate authority. Every node certificate is signed by one CA per
//! cluster, so a node trusts exactly the peers that hold a CA-signed certificate and
//! nothing else (no public PKI, no trust-on-first-use). The CA signs certificate signing
//! requests, never keys: a node's private key is generated on that node and stays there.
//!
//! Files: `ca.pem` (the CA certificate, public) and `ca.key` (its key, mode 0600). Nodes
//! that joined hold only `ca.pem`, as a [`CaCert`].

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{pem::PemObject, CertificateDer};
use time::{Duration, OffsetDateTime};

use crate::{fsutil, identity, JoinToken, NodeIdentity, TransportError};

/// File name of the CA certificate in a data directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key in a data directory (mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";

/// How long a cluster CA is valid.
pub const CA_VALIDITY: Duration = Duration::days(20 * 365);
/// How long a node certificate is valid unless the node is configured otherwise: short,
/// because nodes renew theirs automatically (at two thirds of it) and a certificate that
/// leaks, or a node that is removed, stops counting within a day.
pub const DEFAULT_NODE_CERT_LIFETIME: std::time::Duration =
    std::time::Duration::from_secs(24 * 3600);
/// Certificates are back-dated this much to tolerate clock skew between nodes.
const BACKDATE: Duration = Duration::hours(1);

/// The cluster CA certificate alone: what every node needs to verify its peers.
///
/// It may carry other CAs trusted with it (`ca.pem` then holds several certificates, the
/// CA first): while the cluster's CA is rotated, peers whose certificates the other CA
/// signed are still let in.
#[derive(Clone, PartialEq, Eq)]
pub struct CaCert {
    der: CertificateDer<'static>,
    also: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for CaCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaCert")
            .field("sha256", &self.fingerprint_hex())
            .field("also_trusted", &self.also.len())
            .finish()
    }
}

impl CaCert {
    /// Parses PEM `CERTIFICATE`s, each a CA certificate: the CA, then any trusted with it.
    pub fn from_pem(pem: &str) -> Result<Self, TransportError> {
        let mut all = CertificateDer::pem_slice_iter(pem.as_bytes())
            .map(|c| {
                c.map_err(|e| TransportError::Certificate(format!("CA certificate PEM: {e}")))
                    .and_then(|c| Self::from_der(c.into_owned()))
            })
            .collect::<Result<Vec<_>, _>>()?
            .into_iter();
        let mut ca = all.next().ok_or_else(|| {
            TransportError::Certificate("CA certificate PEM: no certificate".into())
        })?;
        for other in all {
            ca = ca.trusting(&other);
        }
        Ok(ca)
    }

    /// This CA, also trusting `other`'s own certificate (not what `other` trusts).
    pub fn trusting(&self, other: &CaCert) -> CaCert {
        let mut next = self.clone();
        if !next.roots().any(|r| r == &other.der) {
            next.also.push(other.der.clone());
        }
        next
    }

    /// This CA alone, trusting no other.
    pub fn alone(&self) -> CaCert {
        CaCert {
            der: self.der.clone(),
            also: Vec::new(),
        }
    }

    /// Every CA certificate trusted: this CA first.
    pub fn roots(&self) -> impl Iterator<Item = &CertificateDer<'static>> {
        std::iter::once(&self.der).chain(self.also.iter())
    }

    /// Whether `ca`'s own certificate is among those trusted.
    pub fn trusts(&self, ca: &CaCert) -> bool {
        self.roots().any(|r| r == &ca.der)
    }

    /// Wraps a DER certificate after checking it is a CA certificate.
    pub fn from_der(der: CertificateDer<'static>) -> Result<Self, TransportError> {
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| TransportError::Certificate(format!("CA certificate: {e}")))?;
        if !cert.is_ca() {
            return Err(TransportError::Certificate(
                "certificate is not a CA certificate (basicConstraints CA:FALSE)".into(),
            ));
        }
        Ok(CaCert {
            der,
            also: Vec::new(),
        })
    }

    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// Every trusted CA certificate as PEM, this CA first: what `ca.pem` holds.
    pub fn pem(&self) -> String {
        self.roots().map(|c| pem_encode("CERTIFICATE", c)).collect()
    }

    /// SHA-256 of this CA's DER certificate: what a join token pins.
    pub fn fingerprint(&self) -> [u8; 32] {
        fsutil::sha256(&self.der)
    }

    pub fn fingerprint_hex(&self) -> String {
        fsutil::hex(&self.fingerprint())
    }

    /// Writes `ca.pem` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), TransportError> {
        fsutil::write(dir, CA_CERT_FILE, self.pem().as_bytes(), false).map(drop)
    }

    /// Reads `ca.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, TransportError> {
        Self::from_pem(&fsutil::read(dir, CA_CERT_FILE, false)?)
    }
}

/// The cluster CA with its private key: signs node certificates.
pub struct ClusterCa {
    cert: CaCert,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Makes a new CA (ECDSA P-256) for the cluster called `cluster_name`.
    pub fn generate(cluster_name: &str) -> Result<Self, TransportError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Sluice");
        dn.push(
            DnType::CommonName,
            format!("Sluice cluster CA {cluster_name}"),
        );
        params.distinguished_name = dn;
        // Node certificates are signed directly by this CA: no intermediates.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key)?;
        Ok(ClusterCa {
            cert: CaCert {
                der: cert.der().clone(),
                also: Vec::new(),
            },
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, to hand to nodes.
    pub fn cert(&self) -> &CaCert {
        &self.cert
    }

    /// Builds the CA from its certificate and key PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TransportError> {
        let cert = CaCert::from_pem(cert_pem)?.alone();
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| TransportError::Certificate(format!("CA key: {e}")))?;
        if !identity::key_matches_cert(&key, cert.der())? {
            return Err(TransportError::Certificate(
                "CA key does not belong to the CA certificate".into(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(cert.der(), key)?;
        Ok(ClusterCa { cert, issuer })
    }

    /// The CA's signing key, PEM: a secret, for the cluster's replicated state only.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Writes `ca.pem` and `ca.key` (mode 0600) into `dir`, replacing any there.
    pub fn save(&self, dir: &Path) -> Result<(), TransportError> {
        self.cert.save(dir)?;
        let key_pem = self.issuer.key().serialize_pem();
        fsutil::write(dir, CA_KEY_FILE, key_pem.as_bytes(), true).map(drop)
    }

    /// Reads `ca.pem` and `ca.key` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, TransportError> {
        let cert = fsutil::read(dir, CA_CERT_FILE, false)?;
        let key = fsutil::read(dir, CA_KEY_FILE, true)?;
        Self::from_pem(&cert, &key)
    }

    /// Signs a node's certificate signing request for `node_id`, valid for `lifetime`
    /// from now, and returns the certificate PEM.
    ///
    /// The request's signature proves the requester holds the key. Everything else in the
    /// request (names, usages, CA flag) is ignored: the certificate gets exactly the node
    /// id SAN `node-<id>.sluice`, server and client authentication, and no CA rights.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        node_id: u64,
        lifetime: std::time::Duration,
    ) -> Result<String, TransportError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| TransportError::Certificate(format!("certificate request: {e}")))?;
        csr.params = node_params(node_id, lifetime)?;
        let cert = csr.signed_by(&self.issuer)?;
        Ok(cert.pem())
    }
}

/// What the first node of a new cluster holds after [`bootstrap`].
#[derive(Debug)]
pub struct Bootstrap {
    pub ca: ClusterCa,
    pub identity: NodeIdentity,
    pub token: JoinToken,
}

/// Starts a cluster in `dir`: a new CA, this node's identity as `node_id`, and a join
/// token, written as `ca.pem`, `ca.key`, `node.pem`, `node.key` and `join-token`.
/// Refuses to overwrite an existing CA or node key.
pub fn bootstrap(
    dir: &Path,
    cluster_name: &str,
    node_id: u64,
) -> Result<Bootstrap, TransportError> {
    for name in [CA_KEY_FILE, identity::NODE_KEY_FILE] {
        let path = dir.join(name);
        if path.exists() {
            return Err(TransportError::File {
                action: "refusing to overwrite",
                path,
                source: std::io::ErrorKind::AlreadyExists.into(),
            });
        }
    }
    let ca = ClusterCa::generate(cluster_name)?;
    let identity = NodeIdentity::generate(&ca, node_id)?;
    let token = JoinToken::generate(ca.cert())?;
    ca.save(dir)?;
    identity.save(dir)?;
    token.save(dir)?;
    Ok(Bootstrap {
        ca,
        identity,
        token,
    })
}

/// Parameters of a node certificate for `node_id`, valid for `lifetime` from now.
fn node_params(
    node_id: u64,
    lifetime: std::time::Duration,
) -> Result<CertificateParams, TransportError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Sluice");
    dn.push(DnType::CommonName, format!("node {node_id}"));
    params.distinguished_name = dn;
    let name = identity::node_dns_name(node_id)
        .try_into()
        .map_err(|e: rcgen::Error| TransportError::Certificate(e.to_string()))?;
    params.subject_alt_names = vec![SanType::DnsName(name)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    let lifetime = Duration::try_from(lifetime)
        .map_err(|e| TransportError::Certificate(format!("certificate lifetime: {e}")))?;
    params.not_after = now + lifetime;
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

/// A random positive 128-bit serial number.
fn random_serial() -> Result<SerialNumber, TransportError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| TransportError::Certificate(format!("no randomness for a serial: {e}")))?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

/// PEM-encodes DER bytes under `label`, with LF line endings.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der), config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_trusts_each_of_its_cas_and_the_first_is_the_ca() {
        let (a, b) = (
            ClusterCa::generate("a").unwrap(),
            ClusterCa::generate("b").unwrap(),
        );
        let both = a.cert().trusting(b.cert());
        assert_eq!(both.trusting(b.cert()), both, "trusted once");
        let dir = tempfile::tempdir().unwrap();
        both.save(dir.path()).unwrap();
        let loaded = CaCert::load(dir.path()).unwrap();
        assert_eq!(loaded, both);
        assert_eq!(
            loaded.fingerprint(),
            a.cert().fingerprint(),
            "pins name the first"
        );
        assert!(loaded.trusts(a.cert()) && loaded.trusts(b.cert()));
        assert_eq!(loaded.alone(), *a.cert());
        // A certificate of either loads under the bundle; under one CA alone, only its.
        let id_b = NodeIdentity::generate(&b, 7).unwrap();
        id_b.save(dir.path()).unwrap();
        assert!(NodeIdentity::load(dir.path(), &loaded).is_ok());
        assert!(NodeIdentity::load(dir.path(), a.cert()).is_err());
        assert!(id_b.signed_by(b.cert()) && !id_b.signed_by(&loaded));
        // A cluster CA is never a bundle, whatever PEM it is built from.
        let key = b.key_pem();
        let built = ClusterCa::from_pem(&b.cert().trusting(a.cert()).pem(), &key).unwrap();
        assert_eq!(built.cert(), b.cert());
    }

    #[test]
    fn ca_save_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate("test").unwrap();
        ca.save(dir.path()).unwrap();
        let loaded = ClusterCa::load(dir.path()).unwrap();
        assert_eq!(loaded.cert(), ca.cert());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A certificate signed by the loaded CA verifies against the original.
        let req = crate::CertRequest::new().unwrap();
        let pem = loaded
            .sign_csr(req.csr_pem(), 9, DEFAULT_NODE_CERT_LIFETIME)
            .unwrap();
        let id = req.into_identity(&pem, ca.cert()).unwrap();
        assert_eq!(id.node_id(), 9);
    }

    #[test]
    fn bootstrap_writes_everything_once() {
        let dir = tempfile::tempdir().unwrap();
        let b = bootstrap(dir.path(), "test", 1).unwrap();
        let ca = ClusterCa::load(dir.path()).unwrap();
        assert_eq!(ca.cert(), b.ca.cert());
        let id = NodeIdentity::load(dir.path(), ca.cert()).unwrap();
        assert_eq!(id.node_id(), 1);
        let token = JoinToken::load(dir.path()).unwrap();
        assert_eq!(token, b.token);
        assert!(token.pins(ca.cert()));
        let err = bootstrap(dir.path(), "test", 1).unwrap_err();
        assert!(err.to_string().contains("refusing to overwrite"), "{err}");
    }

    #[test]
    fn a_node_certificate_is_not_a_ca() {
        let ca = ClusterCa::generate("test").unwrap();
        let req = crate::CertRequest::new().unwrap();
        let pem = ca
            .sign_csr(req.csr_pem(), 1, DEFAULT_NODE_CERT_LIFETIME)
            .unwrap();
        assert!(CaCert::from_pem(&pem).is_err());
        assert!(ca
            .sign_csr("garbage", 1, DEFAULT_NODE_CERT_LIFETIME)
            .is_err());
    }
}
