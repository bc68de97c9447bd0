//! One error type for everything the transport does, so callers (Raft's network, the
//! router's forwarding) can tell a refused peer from a timeout from a bad frame without
//! digging through quinn, rustls and rcgen error types.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use crate::{frame::FrameError, join::JoinRefusal, token::TokenError};

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{action} {}: {source}", path.display())]
    File {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("socket error: {0}")]
    Socket(#[source] std::io::Error),
    #[error("certificate error: {0}")]
    Certificate(String),
    #[error("TLS configuration error: {0}")]
    TlsConfig(String),
    #[error("invalid join token: {0}")]
    Token(#[from] TokenError),
    #[error("peer presented no certificate")]
    NoPeerCertificate,
    #[error("peer certificate carries no valid node id (expected one DNS name node-<id>.sluice)")]
    NoNodeId,
    #[error("expected node {expected} at {addr}, but the peer's certificate says node {actual}")]
    WrongPeer {
        addr: SocketAddr,
        expected: u64,
        actual: u64,
    },
    #[error("the server's CA certificate does not match the join token's fingerprint")]
    CaMismatch,
    #[error("join refused: {0}")]
    JoinRefused(JoinRefusal),
    #[error("TLS handshake with {addr} failed: {reason}")]
    Handshake { addr: SocketAddr, reason: String },
    #[error("connecting to {addr} failed: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("connection refused by peer: {0}")]
    Refused(String),
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    #[error("peer reset the stream: {0}")]
    StreamReset(String),
    #[error("stream ended before a response arrived")]
    NoResponse,
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("endpoint is closed")]
    EndpointClosed,
}

impl From<rcgen::Error> for TransportError {
    fn from(e: rcgen::Error) -> Self {
        TransportError::Certificate(e.to_string())
    }
}

impl From<rustls::Error> for TransportError {
    fn from(e: rustls::Error) -> Self {
        TransportError::TlsConfig(e.to_string())
    }
}

impl From<quinn::ConnectionError> for TransportError {
    fn from(e: quinn::ConnectionError) -> Self {
        use quinn::ConnectionError as C;
        match e {
            C::ApplicationClosed(close) => {
                let reason = String::from_utf8_lossy(&close.reason).into_owned();
                if close.error_code == crate::codes::NO_CLIENT_CERT {
                    TransportError::NoPeerCertificate
                } else if close.error_code == crate::codes::SHUTDOWN {
                    TransportError::ConnectionLost(format!("peer shut down: {reason}"))
                } else {
                    TransportError::Refused(format!("{reason} (code {})", close.error_code))
                }
            }
            C::ConnectionClosed(close) => {
                TransportError::Refused(format!("{close} (TLS or transport-level rejection)"))
            }
            C::TimedOut => {
                TransportError::ConnectionLost("peer stopped answering (idle timeout)".into())
            }
            C::LocallyClosed => TransportError::EndpointClosed,
            other => TransportError::ConnectionLost(other.to_string()),
        }
    }
}

impl From<quinn::ReadError> for TransportError {
    fn from(e: quinn::ReadError) -> Self {
        use quinn::ReadError as R;
        match e {
            R::Reset(code) => TransportError::StreamReset(crate::codes::describe(code)),
            R::ConnectionLost(c) => c.into(),
            other => TransportError::ConnectionLost(other.to_string()),
        }
    }
}

impl From<quinn::WriteError> for TransportError {
    fn from(e: quinn::WriteError) -> Self {
        use quinn::WriteError as W;
        match e {
            W::Stopped(code) => TransportError::StreamReset(crate::codes::describe(code)),
            W::ConnectionLost(c) => c.into(),
            other => TransportError::ConnectionLost(other.to_string()),
        }
    }
}

impl From<quinn::ReadExactError> for TransportError {
    fn from(e: quinn::ReadExactError) -> Self {
        match e {
            quinn::ReadExactError::FinishedEarly(n) => TransportError::Frame(FrameError::Decode(
                format!("stream ended inside a frame after {n} bytes"),
            )),
            quinn::ReadExactError::ReadError(r) => r.into(),
        }
    }
}
