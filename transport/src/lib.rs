//! Node-to-node transport.
