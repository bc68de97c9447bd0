//! Tenants: API keys and reservations, managed from the CLI through the cluster.

pub mod cli;
pub mod keys;
