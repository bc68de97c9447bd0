//! One QUIC endpoint per node, both server and client, on one UDP port.
//!
//! Two ALPNs share the port. `sluice/1` is cluster traffic with mutual TLS: the server
//! verifies client certificates against the cluster CA (`WebPkiClientVerifier`), the
//! client verifies the server against the CA and presents its node certificate, and each
//! side reads the other's node id from its certificate. `sluice-join/1` is for nodes
//! that have no certificate yet (see [`crate::join`]).
//!
//! Because one rustls configuration serves both ALPNs, client certificates are optional
//! at the TLS layer: a certificate that is presented is always verified against the CA
//! (a wrong-CA certificate fails the handshake), and a `sluice/1` connection without one
//! is closed right after the handshake with "peer presented no certificate", before any
//! stream on it is accepted. In TLS 1.3 the client finishes its handshake before the
//! server has judged its certificate either way, so a refused client sees the refusal on
//! its first read.
//!
//! TLS is rustls with the ring provider passed explicitly to every configuration: no
//! process-wide default provider is used or installed.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use quinn::{
    crypto::rustls::{QuicClientConfig, QuicServerConfig},
    IdleTimeout, VarInt,
};
use rustls::{crypto::CryptoProvider, server::WebPkiClientVerifier, RootCertStore};
use rustls_pki_types::CertificateDer;

use crate::{
    codes, frame::MAX_PAYLOAD, identity, verify::ClusterServerVerifier, CaCert, NodeIdentity,
    TransportError,
};

/// ALPN of cluster traffic (mutual TLS).
pub const ALPN_CLUSTER: &[u8] = b"sluice/1";
/// ALPN of joins (the client has no certificate).
pub const ALPN_JOIN: &[u8] = b"sluice-join/1";

/// Timeouts and limits of an endpoint.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// How often an idle connection sends a keep-alive.
    pub keep_alive: Duration,
    /// A connection with no traffic for this long is dead. Keep it well inside the Raft
    /// election timeout so a dead peer is noticed before an election is needed.
    pub idle_timeout: Duration,
    /// Bidirectional streams a peer may have open to this node at once, per connection.
    /// A caller at the limit waits to open its stream: that is the backpressure.
    pub max_concurrent_streams: u32,
    /// Largest frame this node reads (at most [`MAX_PAYLOAD`]).
    pub max_frame: usize,
    /// How long a server waits for the request frame on a new stream.
    pub request_timeout: Duration,
    /// How long a whole join (connect, request, answer) may take.
    pub join_timeout: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            max_concurrent_streams: 256,
            max_frame: MAX_PAYLOAD,
            request_timeout: Duration::from_secs(10),
            join_timeout: Duration::from_secs(30),
        }
    }
}

impl TransportConfig {
    pub(crate) fn max_frame(&self) -> usize {
        self.max_frame.min(MAX_PAYLOAD)
    }

    /// quinn's transport parameters; `incoming_streams` is how many streams the peer may
    /// open to us (zero on connections we dial: we never accept streams on those).
    pub(crate) fn quinn(
        &self,
        incoming_streams: u32,
    ) -> Result<quinn::TransportConfig, TransportError> {
        let mut t = quinn::TransportConfig::default();
        t.keep_alive_interval(Some(self.keep_alive));
        t.max_idle_timeout(Some(IdleTimeout::try_from(self.idle_timeout).map_err(
            |_| {
                TransportError::TlsConfig(format!("idle timeout {:?} too large", self.idle_timeout))
            },
        )?));
        t.max_concurrent_bidi_streams(VarInt::from_u32(incoming_streams));
        t.max_concurrent_uni_streams(VarInt::from_u32(0));
        Ok(t)
    }
}

/// The ring crypto provider, passed explicitly to every rustls configuration.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A node's QUIC endpoint: accepts cluster connections (and joins, when [`crate::serve`]
/// is given a join authority) and dials other nodes. Cheap to clone.
#[derive(Clone)]
pub struct Endpoint {
    inner: quinn::Endpoint,
    shared: Arc<Shared>,
}

struct Shared {
    node_id: u64,
    /// Replaced when the node's certificate is renewed; each dial takes the current one.
    client: std::sync::RwLock<quinn::ClientConfig>,
    /// The CAs trusted: replaced while the cluster's CA is rotated.
    ca: std::sync::RwLock<CaCert>,
    config: TransportConfig,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("node_id", &self.shared.node_id)
            .field("local_addr", &self.inner.local_addr().ok())
            .finish()
    }
}

impl Endpoint {
    /// Binds `addr` (port 0 picks one) as node `identity`, trusting peers signed by `ca`.
    /// Must be called inside a tokio runtime.
    pub fn bind(
        addr: SocketAddr,
        identity: &NodeIdentity,
        ca: &CaCert,
        config: TransportConfig,
    ) -> Result<Self, TransportError> {
        let socket = std::net::UdpSocket::bind(addr).map_err(TransportError::Socket)?;
        Self::on_socket(socket, identity, ca, config)
    }

    /// An endpoint on a socket the caller bound (so that its port, 0 included, is known
    /// before anything else starts).
    pub fn on_socket(
        socket: std::net::UdpSocket,
        identity: &NodeIdentity,
        ca: &CaCert,
        config: TransportConfig,
    ) -> Result<Self, TransportError> {
        let (server, client) = tls_configs(identity, ca, &config)?;
        let runtime = quinn::default_runtime().ok_or_else(|| {
            TransportError::Socket(std::io::Error::other("no async runtime for the endpoint"))
        })?;
        let (reset_key, cid_key) = identity.restart_keys();
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
        endpoint_config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        let inner = quinn::Endpoint::new(endpoint_config, Some(server), socket, runtime)
            .map_err(TransportError::Socket)?;
        Ok(Endpoint {
            inner,
            shared: Arc::new(Shared {
                node_id: identity.node_id(),
                client: std::sync::RwLock::new(client),
                ca: std::sync::RwLock::new(ca.clone()),
                config,
            }),
        })
    }

    /// Presents `identity` (this node's renewed certificate) from now on: to connections
    /// accepted and dialled after this call. Connections already open stay as they are:
    /// TLS checks certificates only at the handshake.
    pub fn renew(&self, identity: &NodeIdentity) -> Result<(), TransportError> {
        let ca = self.trusted();
        self.present(identity, &ca)
    }

    /// The CAs this endpoint trusts.
    pub fn trusted(&self) -> CaCert {
        self.shared
            .ca
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Presents `identity` and trusts the peers `ca` (with the CAs it carries) signed,
    /// from now on: how a node takes a new CA on during its rotation.
    pub fn present(&self, identity: &NodeIdentity, ca: &CaCert) -> Result<(), TransportError> {
        if identity.node_id() != self.shared.node_id {
            return Err(TransportError::Certificate(format!(
                "a certificate for node {} cannot replace node {}'s",
                identity.node_id(),
                self.shared.node_id
            )));
        }
        let (server, client) = tls_configs(identity, ca, &self.shared.config)?;
        *self.shared.ca.write().unwrap_or_else(|p| p.into_inner()) = ca.clone();
        self.inner.set_server_config(Some(server));
        *self
            .shared
            .client
            .write()
            .unwrap_or_else(|p| p.into_inner()) = client;
        Ok(())
    }

    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        self.inner.local_addr().map_err(TransportError::Socket)
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.shared.node_id
    }

    pub fn config(&self) -> &TransportConfig {
        &self.shared.config
    }

    /// The underlying quinn endpoint.
    pub fn quinn(&self) -> &quinn::Endpoint {
        &self.inner
    }

    /// Dials `addr` on `sluice/1`. With `expected_node`, the peer must be that node.
    /// Not bounded by a timeout of its own beyond the idle timeout: callers wrap it.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        expected_node: Option<u64>,
    ) -> Result<PeerConnection, TransportError> {
        let server_name = match expected_node {
            Some(id) => identity::node_dns_name(id),
            None => "sluice".to_string(),
        };
        let connecting = self
            .inner
            .connect_with(self.client_config(), addr, &server_name)
            .map_err(|e| TransportError::Connect {
                addr,
                reason: e.to_string(),
            })?;
        let conn = connecting.await.map_err(|e| handshake_error(addr, e))?;
        let node_id = match peer_node_id(&conn) {
            Ok(id) => id,
            Err(e) => {
                conn.close(codes::NO_NODE_ID, b"peer certificate carries no node id");
                return Err(e);
            }
        };
        if let Some(expected) = expected_node {
            if expected != node_id {
                conn.close(codes::SHUTDOWN, b"wrong node");
                return Err(TransportError::WrongPeer {
                    addr,
                    expected,
                    actual: node_id,
                });
            }
        }
        Ok(PeerConnection {
            conn,
            node_id,
            max_frame: self.shared.config.max_frame(),
        })
    }

    fn client_config(&self) -> quinn::ClientConfig {
        self.shared
            .client
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) async fn accept(&self) -> Option<quinn::Incoming> {
        self.inner.accept().await
    }

    /// Closes every connection and stops accepting; [`crate::serve`] then returns.
    pub fn close(&self) {
        self.inner.close(codes::SHUTDOWN, b"endpoint shut down");
    }

    /// Waits until closed connections have told their peers (bounded by `limit`).
    pub async fn wait_idle(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.inner.wait_idle()).await;
    }
}

/// The server and client configurations of an endpoint presenting `identity` and
/// trusting peers signed by `ca`.
fn tls_configs(
    identity: &NodeIdentity,
    ca: &CaCert,
    config: &TransportConfig,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), TransportError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    for root in ca.roots() {
        roots.add(root.clone())?;
    }
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            // Joiners have no certificate; `sluice/1` without one is refused in `serve`.
            .allow_unauthenticated()
            .build()
            .map_err(|e| TransportError::TlsConfig(e.to_string()))?;
    let mut server_tls = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(identity.cert_chain().to_vec(), identity.private_key())?;
    server_tls.alpn_protocols = vec![ALPN_CLUSTER.to_vec(), ALPN_JOIN.to_vec()];
    // No session resumption either way: a resumed handshake checks no certificate, so
    // one that expired (or a node removed since) would keep getting in.
    server_tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    server_tls.send_tls13_tickets = 0;
    let server_crypto = QuicServerConfig::try_from(server_tls)
        .map_err(|e| TransportError::TlsConfig(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(Arc::new(config.quinn(config.max_concurrent_streams)?));

    let mut client_tls = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ClusterServerVerifier::new(
            ca.roots(),
            Arc::clone(&provider),
        )?))
        .with_client_auth_cert(identity.cert_chain().to_vec(), identity.private_key())?;
    client_tls.alpn_protocols = vec![ALPN_CLUSTER.to_vec()];
    client_tls.resumption = rustls::client::Resumption::disabled();
    let mut client = quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(client_tls)
            .map_err(|e| TransportError::TlsConfig(e.to_string()))?,
    ));
    client.transport_config(Arc::new(config.quinn(0)?));
    Ok((server, client))
}

/// An established `sluice/1` connection to a peer whose node id was read from its
/// certificate. Cheap to clone; see [`crate::rpc`] for calls on it.
#[derive(Clone, Debug)]
pub struct PeerConnection {
    pub(crate) conn: quinn::Connection,
    node_id: u64,
    pub(crate) max_frame: usize,
}

impl PeerConnection {
    /// The peer's node id, from its certificate.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    pub fn remote_address(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// Whether the connection has closed (for any reason).
    pub fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }

    /// The underlying quinn connection (for raw streams).
    pub fn quinn(&self) -> &quinn::Connection {
        &self.conn
    }

    pub fn close(&self) {
        self.conn.close(codes::SHUTDOWN, b"closed");
    }
}

/// Maps a failed handshake to a clear error.
pub(crate) fn handshake_error(addr: SocketAddr, e: quinn::ConnectionError) -> TransportError {
    use quinn::ConnectionError as C;
    match e {
        C::TransportError(t) => TransportError::Handshake {
            addr,
            reason: t.to_string(),
        },
        C::ConnectionClosed(c) => TransportError::Handshake {
            addr,
            reason: format!("peer closed the connection: {c}"),
        },
        C::TimedOut => TransportError::Connect {
            addr,
            reason: "no answer (timed out)".into(),
        },
        other => other.into(),
    }
}

/// The ALPN a connection negotiated.
pub(crate) fn alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

/// The node id in the certificate the peer presented (verified by rustls already).
pub(crate) fn peer_node_id(conn: &quinn::Connection) -> Result<u64, TransportError> {
    let chain = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(TransportError::NoPeerCertificate)?;
    let leaf = chain.first().ok_or(TransportError::NoPeerCertificate)?;
    identity::node_id_from_cert(leaf)
}
