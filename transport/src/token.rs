//! Join tokens: `sluice1.<secret-hex>.<ca-sha256-hex>`.
//!
//! The secret (32 random bytes) tells the cluster the joiner is invited; the SHA-256 of
//! the CA certificate lets the joiner pin the CA before it trusts anything the server
//! says, so a joiner pointed at the wrong address (or at an attacker) refuses to hand
//! over the secret. The secret is compared in constant time. One string, so it can be
//! pasted into a command line or an environment variable.
//!
//! File: `join-token` (mode 0600).

use std::path::Path;

use subtle::ConstantTimeEq;

use crate::{fsutil, CaCert, TransportError};

/// File name of the join token in a data directory (mode 0600).
pub const TOKEN_FILE: &str = "join-token";
const PREFIX: &str = "sluice1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("a join token starts with `{PREFIX}.`")]
    Prefix,
    #[error("a join token has three dot-separated parts: {PREFIX}.<secret>.<ca-sha256>")]
    Parts,
    #[error("the {0} is not 64 lower- or upper-case hex digits")]
    Hex(&'static str),
    #[error("no randomness available for a token secret: {0}")]
    Random(String),
}

/// A join token: the invitation secret and the pinned CA fingerprint.
#[derive(Clone)]
pub struct JoinToken {
    secret: [u8; 32],
    ca_sha256: [u8; 32],
}

impl PartialEq for JoinToken {
    /// Constant-time in the secret.
    fn eq(&self, other: &Self) -> bool {
        (self.secret.ct_eq(&other.secret) & self.ca_sha256.ct_eq(&other.ca_sha256)).into()
    }
}

impl Eq for JoinToken {}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("secret", &"<redacted>")
            .field("ca_sha256", &fsutil::hex(&self.ca_sha256))
            .finish()
    }
}

impl JoinToken {
    /// A token with a fresh random secret for the cluster whose CA is `ca`.
    pub fn generate(ca: &CaCert) -> Result<Self, TransportError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| TokenError::Random(e.to_string()))?;
        Ok(JoinToken {
            secret,
            ca_sha256: ca.fingerprint(),
        })
    }

    /// A token from its parts (for tests and for tokens kept elsewhere).
    pub fn from_parts(secret: [u8; 32], ca_sha256: [u8; 32]) -> Self {
        JoinToken { secret, ca_sha256 }
    }

    pub fn secret(&self) -> &[u8; 32] {
        &self.secret
    }

    pub fn ca_sha256(&self) -> &[u8; 32] {
        &self.ca_sha256
    }

    /// Whether `candidate` is this token's secret, in time independent of where they differ.
    pub fn secret_matches(&self, candidate: &[u8]) -> bool {
        self.secret.as_slice().ct_eq(candidate).into()
    }

    /// Whether `ca` is the CA this token pins.
    pub fn pins(&self, ca: &CaCert) -> bool {
        self.ca_sha256.ct_eq(&ca.fingerprint()).into()
    }

    /// Parses `sluice1.<secret-hex>.<ca-sha256-hex>`; surrounding whitespace is ignored.
    pub fn parse(s: &str) -> Result<Self, TokenError> {
        let mut parts = s.trim().split('.');
        if parts.next() != Some(PREFIX) {
            return Err(TokenError::Prefix);
        }
        let (Some(secret), Some(ca), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Parts);
        };
        Ok(JoinToken {
            secret: parse_hex32(secret).ok_or(TokenError::Hex("secret"))?,
            ca_sha256: parse_hex32(ca).ok_or(TokenError::Hex("CA fingerprint"))?,
        })
    }

    /// Writes the token to `dir/join-token` (mode 0600).
    pub fn save(&self, dir: &Path) -> Result<(), TransportError> {
        let mut text = self.to_string();
        text.push('\n');
        fsutil::write(dir, TOKEN_FILE, text.as_bytes(), true).map(drop)
    }

    /// Reads `dir/join-token`.
    pub fn load(dir: &Path) -> Result<Self, TransportError> {
        Ok(Self::parse(&fsutil::read(dir, TOKEN_FILE, true)?)?)
    }
}

impl std::fmt::Display for JoinToken {
    /// The full token, secret included: print it only where the operator asked for it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{PREFIX}.{}.{}",
            fsutil::hex(&self.secret),
            fsutil::hex(&self.ca_sha256)
        )
    }
}

impl std::str::FromStr for JoinToken {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, TokenError> {
        Self::parse(s)
    }
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        *o = (hi << 4 | lo) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn token() -> JoinToken {
        JoinToken::from_parts([0xab; 32], [0x01; 32])
    }

    #[test]
    fn round_trip_and_errors() {
        let t = token();
        let s = t.to_string();
        assert!(s.starts_with("sluice1.abab"));
        assert_eq!(JoinToken::parse(&s).unwrap(), t);
        assert_eq!(JoinToken::parse(&format!("  {s}\n")).unwrap(), t);
        assert_eq!(
            JoinToken::parse(&s.to_uppercase().replacen("SLUICE1", "sluice1", 1)).unwrap(),
            t
        );
        assert_eq!(JoinToken::parse("sluice2.aa.bb"), Err(TokenError::Prefix));
        assert_eq!(JoinToken::parse("sluice1.aa"), Err(TokenError::Parts));
        assert_eq!(JoinToken::parse(&format!("{s}.x")), Err(TokenError::Parts));
        assert_eq!(
            JoinToken::parse(&s.replacen("abab", "abzb", 1)),
            Err(TokenError::Hex("secret"))
        );
        assert_eq!(
            JoinToken::parse(&s[..s.len() - 2]),
            Err(TokenError::Hex("CA fingerprint"))
        );
        assert!(
            !format!("{t:?}").contains("abab"),
            "Debug must not print the secret"
        );
    }

    #[test]
    fn secret_comparison() {
        let t = token();
        assert!(t.secret_matches(&[0xab; 32]));
        assert!(!t.secret_matches(&[0xab; 31]));
        let mut other = [0xab; 32];
        other[31] = 0;
        assert!(!t.secret_matches(&other));
    }

    #[test]
    fn save_load() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::ClusterCa::generate("t").unwrap();
        let t = JoinToken::generate(ca.cert()).unwrap();
        assert!(t.pins(ca.cert()));
        t.save(dir.path()).unwrap();
        assert_eq!(JoinToken::load(dir.path()).unwrap(), t);
    }

    proptest! {
        #[test]
        fn parsing_never_panics(s in ".*") {
            let _ = JoinToken::parse(&s);
        }

        #[test]
        fn parsing_near_misses_never_panics(
            secret in "[0-9a-fA-F.é]{0,70}",
            ca in "[0-9a-fA-Fg.]{0,70}",
        ) {
            let _ = JoinToken::parse(&format!("sluice1.{secret}.{ca}"));
        }

        #[test]
        fn any_token_round_trips(secret: [u8; 32], ca: [u8; 32]) {
            let t = JoinToken::from_parts(secret, ca);
            prop_assert_eq!(JoinToken::parse(&t.to_string()).unwrap(), t);
        }
    }
}
