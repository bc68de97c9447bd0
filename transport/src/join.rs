//! Joining a cluster: how a node with no certificate gets one.
//!
//! The joiner holds a join token (secret + CA fingerprint) and the address of any node
//! that accepts joins. It makes its own key and CSR, connects on `sluice-join/1` without
//! a client certificate, and verifies the server against the CA certificate in the
//! server's chain whose SHA-256 equals the token's pin. Only then does it send
//! [`JoinRequest`] (secret, CSR, wishes); the server's [`JoinAuthority`] checks the
//! secret, allocates a node id and signs the CSR; the joiner gets [`JoinResponse`] (its
//! node id, certificate and the CA certificate) or a [`JoinRefusal`].
//!
//! The authority is a trait because the real node allocates ids through Raft; this crate
//! ships [`TokenJoinAuthority`], which holds the CA and a counter, for tests and for a
//! single-node start.

use std::{
    collections::BTreeSet,
    future::Future,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    pin::Pin,
    sync::{atomic::Ordering, Arc, Mutex},
    time::Duration,
};

use quinn::crypto::rustls::QuicClientConfig;
use serde::{Deserialize, Serialize};

use crate::{
    codes,
    endpoint::{handshake_error, provider, ALPN_JOIN},
    frame,
    rpc::{read_frame, reject, write_frame},
    verify::PinnedCaVerifier,
    CaCert, CertRequest, ClusterCa, JoinToken, NodeIdentity, TransportConfig, TransportError,
};

/// Largest join request or response: a CSR, a certificate, a CA certificate, addresses.
const JOIN_FRAME_LIMIT: usize = 64 << 10;

/// What a joiner sends.
#[derive(Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The join token's secret.
    pub token_secret: [u8; 32],
    /// PEM certificate signing request for the joiner's own key.
    pub csr_pem: String,
    /// A node id the joiner asks for (e.g. it is rejoining); the authority may refuse.
    pub requested_node_id: Option<u64>,
    /// The joiner's rack, for placement.
    pub rack: Option<String>,
    /// Addresses the joiner's endpoint listens on.
    pub addresses: Vec<SocketAddr>,
}

impl std::fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinRequest")
            .field("token_secret", &"<redacted>")
            .field("requested_node_id", &self.requested_node_id)
            .field("rack", &self.rack)
            .field("addresses", &self.addresses)
            .finish_non_exhaustive()
    }
}

/// What an admitted joiner gets back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinResponse {
    pub node_id: u64,
    /// The joiner's certificate (PEM), carrying `node-<node_id>.sluice`.
    pub cert_pem: String,
    /// The cluster CA certificate (PEM).
    pub ca_pem: String,
}

/// Why a join was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum JoinRefusal {
    #[error("wrong token")]
    WrongToken,
    #[error("node id {0} is already taken")]
    NodeIdTaken(u64),
    #[error("bad certificate request: {0}")]
    BadRequest(String),
    /// The authority cannot decide now (e.g. this node is not the Raft leader); retry.
    #[error("cannot admit now: {0}")]
    Unavailable(String),
}

/// A boxed future, so [`JoinAuthority`] can be a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Decides joins on the serving node: checks the secret, allocates a node id, signs the
/// CSR. Implementations must compare the secret in constant time
/// ([`JoinToken::secret_matches`]).
pub trait JoinAuthority: Send + Sync + 'static {
    fn join(&self, request: JoinRequest) -> BoxFuture<'_, Result<JoinResponse, JoinRefusal>>;
}

/// A [`JoinAuthority`] that holds the CA and the token and hands out ids from a counter.
pub struct TokenJoinAuthority {
    ca: ClusterCa,
    token: JoinToken,
    state: Mutex<Allocation>,
}

struct Allocation {
    next: u64,
    taken: BTreeSet<u64>,
}

impl std::fmt::Debug for TokenJoinAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenJoinAuthority")
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

impl TokenJoinAuthority {
    /// Admits holders of `token`; new ids start at `first_id` and skip `taken` ids.
    pub fn new(
        ca: ClusterCa,
        token: JoinToken,
        first_id: u64,
        taken: impl IntoIterator<Item = u64>,
    ) -> Self {
        TokenJoinAuthority {
            ca,
            token,
            state: Mutex::new(Allocation {
                next: first_id,
                taken: taken.into_iter().collect(),
            }),
        }
    }

    /// Node ids handed out or reserved so far.
    pub fn taken(&self) -> Vec<u64> {
        self.lock().taken.iter().copied().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Allocation> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn admit(&self, request: &JoinRequest) -> Result<JoinResponse, JoinRefusal> {
        if !self.token.secret_matches(&request.token_secret) {
            return Err(JoinRefusal::WrongToken);
        }
        let mut state = self.lock();
        let node_id = match request.requested_node_id {
            Some(id) if state.taken.contains(&id) => return Err(JoinRefusal::NodeIdTaken(id)),
            Some(id) => id,
            None => {
                let mut id = state.next;
                while state.taken.contains(&id) {
                    id = id
                        .checked_add(1)
                        .ok_or_else(|| JoinRefusal::Unavailable("node ids exhausted".into()))?;
                }
                id
            }
        };
        let cert_pem = self
            .ca
            .sign_csr(
                &request.csr_pem,
                node_id,
                crate::ca::DEFAULT_NODE_CERT_LIFETIME,
            )
            .map_err(|e| JoinRefusal::BadRequest(e.to_string()))?;
        state.taken.insert(node_id);
        if node_id >= state.next {
            state.next = node_id.saturating_add(1);
        }
        Ok(JoinResponse {
            node_id,
            cert_pem,
            ca_pem: self.ca.cert().pem(),
        })
    }
}

impl JoinAuthority for TokenJoinAuthority {
    fn join(&self, request: JoinRequest) -> BoxFuture<'_, Result<JoinResponse, JoinRefusal>> {
        let result = self.admit(&request);
        Box::pin(async move { result })
    }
}

/// Serves one `sluice-join/1` connection: join requests, one per stream, until the
/// joiner closes or `config.join_timeout` passes.
pub(crate) async fn serve_join(
    conn: quinn::Connection,
    authority: Arc<dyn JoinAuthority>,
    config: &TransportConfig,
) {
    let remote = conn.remote_address();
    let work = async {
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let request = match read_frame(&mut recv, JOIN_FRAME_LIMIT).await {
                Ok(Some(payload)) => {
                    frame::decode_payload::<JoinRequest>(&payload).map_err(TransportError::from)
                }
                Ok(None) => Err(TransportError::NoResponse),
                Err(e) => Err(e),
            };
            let request = match request {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(%remote, error = %e, "malformed join request");
                    reject(&mut send, &mut recv, codes::BAD_FRAME);
                    continue;
                }
            };
            let (rack, addresses) = (request.rack.clone(), request.addresses.clone());
            let result = authority.join(request).await;
            match &result {
                Ok(r) => {
                    tracing::info!(%remote, node_id = r.node_id, ?rack, ?addresses, "node joined")
                }
                Err(refusal) => tracing::warn!(%remote, %refusal, "join refused"),
            }
            if let Err(e) = write_frame(&mut send, &result, JOIN_FRAME_LIMIT).await {
                tracing::warn!(%remote, error = %e, "could not send the join answer");
                continue;
            }
            let _ = send.finish();
        }
    };
    if tokio::time::timeout(config.join_timeout, work)
        .await
        .is_err()
    {
        conn.close(codes::REQUEST_TIMEOUT, b"join took too long");
    }
}

/// What the joiner asks for besides a certificate.
#[derive(Debug, Clone, Default)]
pub struct JoinOptions {
    pub requested_node_id: Option<u64>,
    pub rack: Option<String>,
    pub addresses: Vec<SocketAddr>,
}

/// A joined node's identity and the cluster CA certificate.
#[derive(Debug, Clone)]
pub struct Joined {
    pub identity: NodeIdentity,
    pub ca: CaCert,
}

impl Joined {
    /// Writes `ca.pem`, `node.pem` and `node.key` into `dir`.
    pub fn save(&self, dir: &std::path::Path) -> Result<(), TransportError> {
        self.ca.save(dir)?;
        self.identity.save(dir)
    }
}

/// Joins the cluster through the node at `server` with `token`. The whole exchange is
/// bounded by `config.join_timeout`.
pub async fn join_cluster(
    server: SocketAddr,
    token: &JoinToken,
    options: JoinOptions,
    config: &TransportConfig,
) -> Result<Joined, TransportError> {
    let limit = config.join_timeout;
    tokio::time::timeout(limit, join_inner(server, token, options, config))
        .await
        .map_err(|_| TransportError::Timeout(limit))?
}

async fn join_inner(
    server: SocketAddr,
    token: &JoinToken,
    options: JoinOptions,
    config: &TransportConfig,
) -> Result<Joined, TransportError> {
    let cert_request = CertRequest::new()?;
    let provider = provider();
    let verifier = Arc::new(PinnedCaVerifier::new(
        *token.ca_sha256(),
        Arc::clone(&provider),
    ));
    let mismatch = Arc::clone(&verifier.mismatch);
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN_JOIN.to_vec()];
    let mut client = quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(tls).map_err(|e| TransportError::TlsConfig(e.to_string()))?,
    ));
    client.transport_config(Arc::new(config.quinn(0)?));

    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let endpoint = quinn::Endpoint::client(bind).map_err(TransportError::Socket)?;
    let connecting = endpoint
        .connect_with(client, server, "sluice")
        .map_err(|e| TransportError::Connect {
            addr: server,
            reason: e.to_string(),
        })?;
    let conn = match connecting.await {
        Ok(conn) => conn,
        Err(_) if mismatch.load(Ordering::SeqCst) => return Err(TransportError::CaMismatch),
        Err(e) => return Err(handshake_error(server, e)),
    };

    let request = JoinRequest {
        token_secret: *token.secret(),
        csr_pem: cert_request.csr_pem().to_string(),
        requested_node_id: options.requested_node_id,
        rack: options.rack,
        addresses: options.addresses,
    };
    let answer = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        write_frame(&mut send, &request, JOIN_FRAME_LIMIT).await?;
        let _ = send.finish();
        let payload = read_frame(&mut recv, JOIN_FRAME_LIMIT)
            .await?
            .ok_or(TransportError::NoResponse)?;
        Ok::<_, TransportError>(frame::decode_payload::<Result<JoinResponse, JoinRefusal>>(
            &payload,
        )?)
    }
    .await;
    conn.close(codes::SHUTDOWN, b"done");
    // Let the close reach the server; it does not matter if it does not.
    let _ = tokio::time::timeout(Duration::from_millis(200), endpoint.wait_idle()).await;

    let response = answer?.map_err(TransportError::JoinRefused)?;
    let ca = CaCert::from_pem(&response.ca_pem)?;
    if !token.pins(&ca) {
        return Err(TransportError::CaMismatch);
    }
    let identity = cert_request.into_identity(&response.cert_pem, &ca)?;
    if identity.node_id() != response.node_id {
        return Err(TransportError::Certificate(format!(
            "the server said node {} but the certificate says node {}",
            response.node_id,
            identity.node_id()
        )));
    }
    Ok(Joined { identity, ca })
}
