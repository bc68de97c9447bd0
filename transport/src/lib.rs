//! Node-to-node transport: QUIC (quinn) with mutual TLS from a cluster CA, join tokens
//! that let a new node obtain a certificate without ever sending its key, and typed
//! request/response and streaming RPC over versioned, length-checked bincode frames.
//!
//! Layout: [`ca`] and [`identity`] make and store certificates, [`token`] is the join
//! token, [`endpoint`] owns the QUIC endpoint and its TLS configuration, [`join`] is the
//! join protocol, [`rpc`] the typed messaging, [`frame`] the wire format.

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

pub use ca::{CaCert, ClusterCa};
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
