//! Node-to-node transport. For now the frame codec every message will use; the QUIC
//! endpoints with mutual TLS arrive with the cluster work.

pub mod frame;

pub use frame::{decode, encode, FrameError};
