//! Which workload a request belongs to: the key whose hash picks its slice.

use crate::slice::SliceKey;

/// One place a workload key may come from; a router tries its sources in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A request header, e.g. `x-session-id`.
    Header(String),
    /// The OpenAI `user` field.
    User,
    /// The caller's API key (hashed; the key itself is never kept).
    ApiKey,
}

impl std::str::FromStr for KeySource {
    type Err = String;

    /// `header:NAME`, `user` or `api-key`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "user" => Ok(Self::User),
            "api-key" => Ok(Self::ApiKey),
            _ => match s.strip_prefix("header:") {
                Some(h) if !h.is_empty() => Ok(Self::Header(h.to_ascii_lowercase())),
                _ => Err(format!(
                    "unknown workload key source '{s}': use header:NAME, user or api-key"
                )),
            },
        }
    }
}

/// The default order: a session header, then `user`, then the API key.
pub fn default_sources() -> Vec<KeySource> {
    vec![
        KeySource::Header("x-session-id".into()),
        KeySource::User,
        KeySource::ApiKey,
    ]
}

/// What a request offers for keying.
pub struct KeyInputs<'a, H: Fn(&str) -> Option<&'a str>> {
    pub header: H,
    pub user: Option<&'a str>,
    pub api_key: Option<&'a str>,
}

/// The slice key of a request: the first source that is present, each source in its
/// own namespace so that a user named like a session id does not collide with it.
/// `None` when it has none of them: the router then keys it by its content.
pub fn workload_key<'a, H: Fn(&str) -> Option<&'a str>>(
    sources: &[KeySource],
    inputs: &KeyInputs<'a, H>,
) -> Option<SliceKey> {
    for s in sources {
        let found = match s {
            KeySource::Header(name) => (inputs.header)(name)
                .filter(|v| !v.is_empty())
                .map(|v| ("h", v)),
            KeySource::User => inputs.user.filter(|v| !v.is_empty()).map(|v| ("u", v)),
            KeySource::ApiKey => inputs.api_key.filter(|v| !v.is_empty()).map(|v| ("k", v)),
        };
        if let Some((ns, value)) = found {
            return Some(SliceKey::of(&format!("{ns}:{value}")));
        }
    }
    None
}

/// The key of requests that offer neither a key nor content to derive one from.
pub fn anonymous_key() -> SliceKey {
    SliceKey::of("anonymous")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_present_source_wins() {
        let sources = default_sources();
        let with_header = KeyInputs {
            header: |h: &str| (h == "x-session-id").then_some("s1"),
            user: Some("alice"),
            api_key: Some("sk-1"),
        };
        let only_user = KeyInputs {
            header: |_: &str| None,
            user: Some("alice"),
            api_key: Some("sk-1"),
        };
        let only_key = KeyInputs {
            header: |_: &str| None,
            user: None,
            api_key: Some("sk-1"),
        };
        let nothing = KeyInputs {
            header: |_: &str| None,
            user: None,
            api_key: None,
        };
        assert_eq!(
            workload_key(&sources, &with_header),
            Some(SliceKey::of("h:s1"))
        );
        assert_eq!(
            workload_key(&sources, &only_user),
            Some(SliceKey::of("u:alice"))
        );
        assert_eq!(
            workload_key(&sources, &only_key),
            Some(SliceKey::of("k:sk-1"))
        );
        assert_eq!(workload_key(&sources, &nothing), None);
    }

    #[test]
    fn parses_sources() {
        assert_eq!(
            "header:X-Session-Id".parse(),
            Ok(KeySource::Header("x-session-id".into()))
        );
        assert_eq!("user".parse(), Ok(KeySource::User));
        assert!("header:".parse::<KeySource>().is_err());
        assert!("cookie"
            .parse::<KeySource>()
            .unwrap_err()
            .contains("cookie"));
    }
}
