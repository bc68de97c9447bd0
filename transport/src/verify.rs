//! Certificate checks rustls cannot express by itself.
//!
//! Cluster clients dial addresses, not names: [`ClusterServerVerifier`] accepts any
//! certificate that chains to the cluster CA and carries exactly one node id, checking
//! the chain with webpki against the name `node-<id>.sluice` read from the certificate.
//! Joiners do not have the
//! CA certificate yet: [`PinnedCaVerifier`] takes it from the server's chain only if its
//! SHA-256 equals the join token's pin, then verifies the server against it.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use rustls::{
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        WebPkiServerVerifier,
    },
    crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider},
    CertificateError, DigitallySignedStruct, Error, RootCertStore, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::{fsutil, identity};

fn node_name_of(end_entity: &CertificateDer<'_>) -> Result<(u64, ServerName<'static>), Error> {
    let id = identity::node_id_from_cert(end_entity).map_err(|e| {
        Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e))))
    })?;
    let name = ServerName::try_from(identity::node_dns_name(id))
        .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
    Ok((id, name))
}

/// Verifies a cluster peer's server certificate: CA-signed and carrying one node id.
#[derive(Debug)]
pub(crate) struct ClusterServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ClusterServerVerifier {
    pub(crate) fn new<'a>(
        cas: impl IntoIterator<Item = &'a CertificateDer<'static>>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, Error> {
        let mut roots = RootCertStore::empty();
        for ca in cas {
            roots.add(ca.clone())?;
        }
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| Error::General(e.to_string()))?;
        Ok(ClusterServerVerifier { inner })
    }
}

impl ServerCertVerifier for ClusterServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        // The expected node, if any, is checked after the handshake (`Endpoint::connect`),
        // where the error can name both ids.
        let (_, name) = node_name_of(end_entity)?;
        self.inner
            .verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Verifies the server during a join against the CA whose SHA-256 the token pins,
/// taking that CA certificate from the server's own chain.
#[derive(Debug)]
pub(crate) struct PinnedCaVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
    /// Set when no certificate in the server's chain matched the pin.
    pub(crate) mismatch: Arc<AtomicBool>,
}

impl PinnedCaVerifier {
    pub(crate) fn new(pin: [u8; 32], provider: Arc<CryptoProvider>) -> Self {
        PinnedCaVerifier {
            pin,
            provider,
            mismatch: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| fsutil::sha256(c.as_ref()) == self.pin)
        else {
            self.mismatch.store(true, Ordering::SeqCst);
            return Err(Error::InvalidCertificate(CertificateError::UnknownIssuer));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&self.provider),
        )
        .build()
        .map_err(|e| Error::General(e.to_string()))?;
        let (_, name) = node_name_of(end_entity)?;
        inner.verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
