//! App versions, as a device states them in the `kryonix-app-version` header and a server
//! requires them (`min_app_version`): one parser and one order, so both sides agree on what
//! "older than 4.2" means.
//!
//! A version is one to four dot-separated numbers (`4`, `4.2`, `4.2.0`, `4.2.0.117`), optionally
//! followed by `-pre-release` and `+build` parts (`4.2.0-beta.1+2026`). Missing numbers count as
//! 0 (`4.2` is `4.2.0`); a pre-release sorts before its release (`4.2.0-beta` < `4.2.0`);
//! build metadata is ignored. That covers Android's `versionName` and iOS's
//! `CFBundleShortVersionString`.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// The longest version string accepted (a header value, so bounded).
pub const MAX_APP_VERSION_LEN: usize = 64;

/// A version string that is not `N[.N[.N[.N]]][-pre][+build]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid app version {text:?}: {reason} (expected e.g. 4.2.0, 4.2 or 4.2.0-beta.1)")]
pub struct InvalidAppVersion {
    pub text: String,
    pub reason: &'static str,
}

/// A parsed app version; ordered (and equal) as the module docs say: `4.2 == 4.2.0+7`.
#[derive(Debug, Clone)]
pub struct AppVersion {
    numbers: [u32; 4],
    pre: Option<String>,
    text: String,
}

impl AppVersion {
    /// The version as it was written (build metadata included).
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for AppVersion {
    type Err = InvalidAppVersion;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| InvalidAppVersion {
            text: text.chars().take(MAX_APP_VERSION_LEN).collect(),
            reason,
        };
        if text.len() > MAX_APP_VERSION_LEN {
            return Err(invalid("longer than 64 bytes"));
        }
        let without_build = match text.split_once('+') {
            None => text,
            Some((_, "")) => return Err(invalid("empty build metadata after '+'")),
            Some((version, _)) => version,
        };
        let (core, pre) = match without_build.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (without_build, None),
        };
        if core.is_empty() {
            return Err(invalid("no version number"));
        }
        let mut numbers = [0u32; 4];
        for (index, part) in core.split('.').enumerate() {
            let slot = numbers
                .get_mut(index)
                .ok_or_else(|| invalid("more than four numbers"))?;
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid("each part must be a number"));
            }
            *slot = part.parse().map_err(|_| invalid("a number is too large"))?;
        }
        let pre = match pre {
            None => None,
            Some(p)
                if !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') =>
            {
                Some(p.to_owned())
            }
            Some(_) => return Err(invalid("the pre-release part must be [0-9A-Za-z.-]+")),
        };
        if !text.is_ascii() || text.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(invalid("spaces or non-ASCII characters"));
        }
        Ok(Self {
            numbers,
            pre,
            text: text.to_owned(),
        })
    }
}

impl Ord for AppVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        self.numbers
            .cmp(&other.numbers)
            .then_with(|| match (&self.pre, &other.pre) {
                (None, None) => Ordering::Equal,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(a), Some(b)) => compare_pre(a, b),
            })
    }
}

// Equality follows the order, not the text, so `==` and `<` never disagree.
impl PartialEq for AppVersion {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for AppVersion {}

impl std::hash::Hash for AppVersion {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.numbers.hash(state);
        self.pre.hash(state);
    }
}

impl PartialOrd for AppVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Pre-releases compare part by part: numbers numerically and below words (`beta.2` < `beta.10`
/// < `rc.1`), and a shorter list first (`beta` < `beta.1`).
fn compare_pre(a: &str, b: &str) -> Ordering {
    let mut left = a.split('.');
    let mut right = b.split('.');
    loop {
        match (left.next(), right.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let order = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(m), Ok(n)) => m.cmp(&n),
                    (Ok(_), Err(_)) => Ordering::Less,
                    (Err(_), Ok(_)) => Ordering::Greater,
                    (Err(_), Err(_)) => x.cmp(y),
                };
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}

impl fmt::Display for AppVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> AppVersion {
        s.parse().unwrap()
    }

    #[test]
    fn versions_order_as_an_app_store_would() {
        let ascending = [
            "1",
            "1.0.1",
            "1.2-beta",
            "1.2.0-beta.2",
            "1.2.0-beta.10",
            "1.2.0-rc.1",
            "1.2",
            "1.2.0.1",
            "1.10",
            "4.2.0",
            "10",
        ];
        for pair in ascending.windows(2) {
            assert!(v(pair[0]) < v(pair[1]), "{} < {}", pair[0], pair[1]);
        }
        assert_eq!(v("4.2").cmp(&v("4.2.0.0")), Ordering::Equal);
        assert_eq!(v("4.2.0+build.7").cmp(&v("4.2.0")), Ordering::Equal);
        assert_eq!(v("4.2.0+build.7").as_str(), "4.2.0+build.7");
        // Equality agrees with the order (a set of versions dedupes them the same way).
        assert_eq!(v("4.2"), v("4.2.0+build.7"));
        let set: std::collections::HashSet<AppVersion> = ["4.2", "4.2.0", "4.2.0+7", "4.2.0-rc"]
            .iter()
            .map(|s| v(s))
            .collect();
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn malformed_versions_are_refused_with_the_reason() {
        for bad in [
            "",
            "v4.2",
            "4..2",
            "4.2.",
            "4.2.0.1.5",
            "4.x",
            "4.2-",
            "4.2+",
            "4.2-beta!",
            " 4.2",
            "4.2 ",
            "99999999999",
            &"1.".repeat(40),
        ] {
            let err = bad.parse::<AppVersion>().unwrap_err();
            assert!(!err.to_string().is_empty(), "{bad:?}");
        }
    }
}
