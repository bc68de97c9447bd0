//! Frames on the wire: `[version: u8][length: u32 BE][bincode payload]`.
//!
//! Every node-to-node message is a serde type encoded here and nowhere else, so the
//! encoding can change behind one version byte. Lengths are checked before anything is
//! allocated, so a malformed or oversized frame is an error, never a panic or an
//! unbounded allocation.

use serde::{de::DeserializeOwned, Serialize};

/// Version of the frame format and payload encoding.
pub const FRAME_VERSION: u8 = 1;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 5;
/// Largest payload any frame may carry.
pub const MAX_PAYLOAD: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("unsupported frame version {0} (this node speaks {FRAME_VERSION})")]
    Version(u8),
    #[error("frame of {0} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
    TooLarge(usize),
    #[error("frame of {len} bytes exceeds this stream's {limit}-byte limit")]
    OverLimit { len: usize, limit: usize },
    #[error("frame payload could not be decoded: {0}")]
    Decode(String),
    #[error("message could not be encoded: {0}")]
    Encode(String),
    #[error("{0} bytes left over after the payload")]
    Trailing(usize),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_PAYLOAD>()
}

/// Encodes `msg` as one frame.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![FRAME_VERSION, 0, 0, 0, 0];
    bincode::serde::encode_into_std_write(msg, &mut out, config())
        .map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = out.len() - HEADER_LEN;
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(len));
    }
    out[1..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Reads a frame header: the payload length that follows, once checked.
pub fn payload_len(header: [u8; HEADER_LEN]) -> Result<usize, FrameError> {
    if header[0] != FRAME_VERSION {
        return Err(FrameError::Version(header[0]));
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes a payload (the bytes after the header) into a message.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    let (msg, used) = bincode::serde::decode_from_slice(payload, config())
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    if used != payload.len() {
        return Err(FrameError::Trailing(payload.len() - used));
    }
    Ok(msg)
}

/// Decodes one whole frame held in `bytes`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FrameError> {
    let header: [u8; HEADER_LEN] = bytes
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| {
            FrameError::Decode(format!("frame shorter than its {HEADER_LEN}-byte header"))
        })?;
    let len = payload_len(header)?;
    let payload = &bytes[HEADER_LEN..];
    if payload.len() != len {
        return Err(FrameError::Decode(format!(
            "header says {len} payload bytes, frame has {}",
            payload.len()
        )));
    }
    decode_payload(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Msg {
        Load {
            replica: u64,
            mu: f64,
            slices: Vec<(u64, f64)>,
        },
        Text(String),
    }

    #[test]
    fn round_trip() {
        let m = Msg::Load {
            replica: 3,
            mu: 12.5,
            slices: vec![(1, 2.0)],
        };
        assert_eq!(decode::<Msg>(&encode(&m).unwrap()).unwrap(), m);
    }

    #[test]
    fn bad_frames_are_errors() {
        let mut f = encode(&Msg::Text("hi".into())).unwrap();
        f[0] = 9;
        assert!(matches!(decode::<Msg>(&f), Err(FrameError::Version(9))));
        let huge = [FRAME_VERSION, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(payload_len(huge), Err(FrameError::TooLarge(_))));
        assert!(decode::<Msg>(&[FRAME_VERSION, 0]).is_err());
        let mut f = encode(&Msg::Text("hi".into())).unwrap();
        f.push(0);
        assert!(decode::<Msg>(&f).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<Msg>(&bytes);
        }

        #[test]
        fn any_message_round_trips(replica: u64, mu in -1e9f64..1e9, s in ".{0,64}") {
            let a = Msg::Load { replica, mu, slices: vec![(replica, mu)] };
            prop_assert_eq!(decode::<Msg>(&encode(&a).unwrap()).unwrap(), a);
            let b = Msg::Text(s);
            prop_assert_eq!(decode::<Msg>(&encode(&b).unwrap()).unwrap(), b);
        }
    }
}
