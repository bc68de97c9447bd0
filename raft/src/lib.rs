//! Raft-replicated control state.
//!
//! Empty on purpose until the cluster work (issue 4): a single node keeps its assignment
//! in memory, and nothing here pretends to replicate it.
