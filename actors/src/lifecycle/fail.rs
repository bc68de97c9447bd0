//! How a request that cannot be served is answered. One list, so that the live door and
//! the simulator's doors give a failure the same status and the same name, and the
//! drills judge what clients would really see.

/// Why the front door answers a request with an error instead of a completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Fail {
    /// The request is implicated on as many replicas as the quarantine allows: refused
    /// so that it cannot break more.
    #[error(
        "this request was being served by {replicas} replicas when each of them failed; \
         it is refused for now so that it cannot break more"
    )]
    Quarantined { replicas: usize },
    /// No replica in its subset can take it (none healthy, or a retry found none left).
    #[error("no healthy replica is available")]
    NoReplica,
    /// The call to the replica failed before any answer, and no retry is left.
    #[error("the replica could not be reached")]
    Unreachable,
    /// The replica held the request past its deadline.
    #[error("the replica did not answer in time")]
    Timeout,
    /// The replica's answer broke off, went silent or ended early after it began: too
    /// late to retry, as part of it may have reached the client.
    #[error("the replica's answer was cut off")]
    CutOff,
}

impl Fail {
    /// The HTTP status the client gets.
    pub fn status(&self) -> u16 {
        match self {
            Fail::Quarantined { .. } => 422,
            Fail::NoReplica => 503,
            Fail::Unreachable | Fail::CutOff => 502,
            Fail::Timeout => 504,
        }
    }

    /// The OpenAI-style error `type`.
    pub fn error_type(&self) -> &'static str {
        match self {
            Fail::Quarantined { .. } => "invalid_request_error",
            Fail::NoReplica => "service_unavailable",
            Fail::Unreachable | Fail::CutOff => "upstream_error",
            Fail::Timeout => "timeout",
        }
    }

    /// The OpenAI-style error `code`, where the type alone does not say what happened.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            Fail::Quarantined { .. } => Some("request_quarantined"),
            _ => None,
        }
    }

    /// Seconds a client should wait before trying again, for the failures that say
    /// nothing about the request itself (another replica may well serve it soon).
    pub fn retry_after_s(&self) -> Option<u32> {
        match self {
            Fail::NoReplica | Fail::Unreachable => Some(1),
            Fail::Quarantined { .. } | Fail::Timeout | Fail::CutOff => None,
        }
    }
}
