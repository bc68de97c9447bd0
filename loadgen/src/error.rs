//! Why a load run could not be carried out (failed requests are not errors: they are
//! counted in the report).

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("invalid load configuration: {0}")]
    Config(String),
    #[error("invalid URL `{url}`: {reason}")]
    Url { url: String, reason: String },
    #[error("load generator failed: {0}")]
    Internal(String),
}
