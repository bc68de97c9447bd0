//! The one place that turns Raft values into bytes and back.
//!
//! bincode 2 (serde mode) is marked unmaintained, so every encoded value goes through
//! here and starts with a format version byte: replacing the encoding later means a new
//! version number, not a hunt through the crate. The log store, the snapshot files and
//! the transport framing (`RaftRpc`/`RaftRpcReply`) all use it.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Version byte written in front of every encoded value.
pub const FORMAT_VERSION: u8 = 2;

/// Largest value we agree to decode (64 MiB). Control state is small; this bounds the
/// allocation a corrupt length prefix or a hostile peer can make us attempt.
pub const MAX_ENCODED_LEN: usize = 64 << 20;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_ENCODED_LEN>()
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("encoding failed: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("decoding failed: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("empty input")]
    Empty,
    #[error("unknown format version {0} (this build reads version {FORMAT_VERSION})")]
    Version(u8),
    #[error("{0} trailing bytes after the value")]
    Trailing(usize),
}

impl From<CodecError> for std::io::Error {
    fn from(e: CodecError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

/// Encodes `value` as a version byte followed by its bincode form.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT_VERSION];
    bincode::serde::encode_into_std_write(value, &mut out, config())?;
    Ok(out)
}

/// Decodes a value written by [`encode`], rejecting other versions and trailing bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::Version(version));
    }
    let (value, used) = bincode::serde::decode_from_slice(body, config())?;
    if used != body.len() {
        return Err(CodecError::Trailing(body.len() - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_bad_frames() {
        let v = (7u64, String::from("x"), vec![1.5f64]);
        let bytes = encode(&v).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode::<(u64, String, Vec<f64>)>(&bytes).unwrap(), v);

        assert!(matches!(decode::<u64>(&[]), Err(CodecError::Empty)));
        let mut other = bytes.clone();
        other[0] = 99;
        assert!(matches!(
            decode::<(u64, String, Vec<f64>)>(&other),
            Err(CodecError::Version(99))
        ));
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            decode::<(u64, String, Vec<f64>)>(&long),
            Err(CodecError::Trailing(1))
        ));
        assert!(decode::<(u64, String, Vec<f64>)>(&bytes[..bytes.len() - 1]).is_err());
    }
}
