//! Slices of the workload keyspace and their assignment to replica subsets.

pub mod assignment;
pub mod key;

pub use assignment::{Assignment, AssignmentError, ReplicaId, Slice};
pub use key::SliceKey;
