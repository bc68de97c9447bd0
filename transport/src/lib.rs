//! Node-to-node transport: QUIC (quinn) with mutual TLS from a cluster CA, join tokens
//! that let a new node obtain a certificate without ever sending its key, and typed
//! request/response and streaming RPC over versioned, length-checked bincode frames.
//!
//! Layout: [`ca`] and [`identity`] make and store certificates, [`token`] is the join
//! token, [`endpoint`] owns the QUIC endpoint and its TLS configuration, [`join`] is the
//! join protocol, [`rpc`] the typed messaging, [`frame`] the wire format.
//!
//! ```
//! use std::{sync::Arc, time::Duration};
//! use sluice_transport::*;
//!
//! struct Echo;
//! impl Handler for Echo {
//!     type Request = String;
//!     async fn handle(&self, peer: u64, text: String, mut reply: Reply) {
//!         if text == "stream" {
//!             for i in 0..3u32 {
//!                 if reply.send(&i).await.is_err() { return; }
//!             }
//!             let _ = reply.finish();
//!         } else {
//!             let _ = reply.respond(&format!("node {peer} said {text}")).await;
//!         }
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), TransportError> {
//! # let dir = tempfile::tempdir().map_err(TransportError::Socket)?;
//! # let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
//! let config = TransportConfig::default();
//! // First node: CA, its own identity as node 1 and a join token, written to its data dir.
//! let Bootstrap { ca, identity, token } = bootstrap(&dir_a, "prod", 1)?;
//! let ca_cert = ca.cert().clone();
//! let a = Endpoint::bind("127.0.0.1:0".parse().unwrap(), &identity, &ca_cert, config.clone())?;
//! let a_addr = a.local_addr()?;
//! let joins: Arc<dyn JoinAuthority> = Arc::new(TokenJoinAuthority::new(ca, token.clone(), 2, [1]));
//! tokio::spawn(serve(a.clone(), Arc::new(Echo), Some(joins)));
//!
//! // Second node: joins with the token string, gets node id 2, saves its identity.
//! let token: JoinToken = token.to_string().parse()?;
//! let joined = join_cluster(a_addr, &token, JoinOptions::default(), &config).await?;
//! joined.save(&dir_b)?;
//! let b = Endpoint::bind("127.0.0.1:0".parse().unwrap(), &joined.identity, &joined.ca, config)?;
//! let client = Client::new(b);
//! let answer: String = client.call(a_addr, &"hi".to_string(), Duration::from_secs(5)).await?;
//! assert_eq!(answer, "node 2 said hi");
//! let numbers: Vec<u32> = client
//!     .call_stream(a_addr, &"stream".to_string(), Duration::from_secs(5))
//!     .await?
//!     .collect()
//!     .await?;
//! assert_eq!(numbers, [0, 1, 2]);
//! # Ok(()) }
//! ```

pub mod ca;
pub mod endpoint;
pub mod error;
pub mod frame;
mod fsutil;
pub mod identity;
pub mod join;
pub mod rpc;
pub mod token;
mod verify;

pub use ca::{bootstrap, Bootstrap, CaCert, ClusterCa};
pub use endpoint::{Endpoint, PeerConnection, TransportConfig, ALPN_CLUSTER, ALPN_JOIN};
pub use error::TransportError;
pub use frame::{decode, encode, FrameError};
pub use identity::{CertRequest, NodeIdentity};
pub use join::{
    join_cluster, JoinAuthority, JoinOptions, JoinRefusal, JoinRequest, JoinResponse, Joined,
    TokenJoinAuthority,
};
pub use rpc::{serve, Client, Handler, Reply, ResponseStream};
pub use token::{JoinToken, TokenError};

/// QUIC application error codes this crate uses to close connections and reset streams.
pub mod codes {
    use quinn::VarInt;

    /// Normal shutdown of a connection or endpoint.
    pub const SHUTDOWN: VarInt = VarInt::from_u32(0);
    /// A stream carried a malformed, oversized or undecodable frame.
    pub const BAD_FRAME: VarInt = VarInt::from_u32(1);
    /// The handler dropped its reply without finishing it (it failed or panicked).
    pub const HANDLER_ABORTED: VarInt = VarInt::from_u32(2);
    /// The request did not arrive in time.
    pub const REQUEST_TIMEOUT: VarInt = VarInt::from_u32(3);
    /// A cluster (`sluice/1`) connection presented no client certificate.
    pub const NO_CLIENT_CERT: VarInt = VarInt::from_u32(0x10);
    /// The peer's certificate carries no node id.
    pub const NO_NODE_ID: VarInt = VarInt::from_u32(0x11);
    /// This node does not accept joins.
    pub const JOIN_DISABLED: VarInt = VarInt::from_u32(0x12);
    /// The connection negotiated no ALPN this node serves.
    pub const BAD_ALPN: VarInt = VarInt::from_u32(0x13);

    /// A readable name for a stream reset code.
    pub fn describe(code: VarInt) -> String {
        match code {
            c if c == BAD_FRAME => "malformed or oversized frame".into(),
            c if c == HANDLER_ABORTED => "the handler aborted without finishing its reply".into(),
            c if c == REQUEST_TIMEOUT => "the request did not arrive in time".into(),
            c if c == SHUTDOWN => "stopped by the peer".into(),
            c => format!("application error code {c}"),
        }
    }
}
