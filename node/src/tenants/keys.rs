//! Tenant API keys: made once by `sluice tenant create`, stored only as SHA-256 in Raft,
//! and looked up in constant time at the front door. A key never appears in a log line,
//! a metric, or an error message.

use subtle::ConstantTimeEq;

/// Prefix of every key, so that a leaked one is recognizable by secret scanners.
pub const KEY_PREFIX: &str = "sk-sluice-";

/// A fresh key: 32 random bytes, hex.
pub fn generate() -> anyhow::Result<String> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)
        .map_err(|e| anyhow::anyhow!("no randomness available for an API key: {e}"))?;
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{KEY_PREFIX}{hex}"))
}

/// The SHA-256 of a secret: what the control state keeps of a tenant key or a join token.
pub fn sha256(key: impl AsRef<[u8]>) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_ref());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The tenants' key hashes, as the front door checks them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyRing {
    entries: Vec<(String, [u8; 32])>,
}

impl KeyRing {
    pub fn new(entries: impl IntoIterator<Item = (String, [u8; 32])>) -> Self {
        Self {
            entries: entries.into_iter().collect(),
        }
    }

    /// No tenant exists: the front door is open (local use, the embedded default).
    pub fn is_open(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The tenant whose key this is. Every entry is compared, in constant time each, so
    /// the time taken says nothing about which tenant matched or how closely.
    pub fn tenant(&self, key: &str) -> Option<&str> {
        let hash = sha256(key);
        let mut found = None;
        for (name, h) in &self.entries {
            if bool::from(h.ct_eq(&hash)) {
                found = Some(name.as_str());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fresh_and_found_only_by_their_own_hash() {
        let (a, b) = (generate().unwrap(), generate().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + 64);
        let ring = KeyRing::new([
            ("acme".to_owned(), sha256(&a)),
            ("zeta".to_owned(), sha256(&b)),
        ]);
        assert_eq!(ring.tenant(&a), Some("acme"));
        assert_eq!(ring.tenant(&b), Some("zeta"));
        assert_eq!(ring.tenant("sk-sluice-00"), None);
        assert_eq!(ring.tenant(""), None);
        assert!(!ring.is_open());
        assert!(KeyRing::default().is_open());
    }
}
