//! The paths of the HTTP API: the templates the server's router matches, and builders for the
//! concrete paths a device sends. One table, so a path changed here changes on both sides.
//!
//! Templates use the router's `{name}` syntax; `docs/sync-protocol.md` describes each route.

use crate::namespace::Namespace;

/// `POST`, device token: upload a batch of items ([`crate::wire::PushRequest`]).
pub const PUSH: &str = "/v1/sync/push";
/// `POST`, device token: where the server stands with a producer
/// ([`crate::wire::HelloRequest`]), once per session before the first push.
pub const HELLO: &str = "/v1/sync/hello";
/// `GET ?limit=&cursor=`, device token: the changes after a cursor
/// ([`crate::wire::PullResponse`]). Build the concrete path with [`pull`].
pub const PULL: &str = "/v1/sync/pull";
/// `POST`, service token: a backend publishes changes ([`crate::wire::PublishRequest`]).
pub const PUBLISH: &str = "/v1/publish";
/// Revokes a token before it expires (service token; body [`crate::wire::RevokeRequest`]).
pub const TOKENS_REVOKE: &str = "/v1/tokens/revoke";
/// `GET`, `PUT`, `DELETE`, any token: one entry of the tenant's L2 cache.
pub const CACHE_ENTRY: &str = "/v1/cache/{namespace}/{key}";
/// `POST`, any token: several keys of one namespace at once
/// ([`crate::wire::MultiGetRequest`]). Build the concrete path with [`cache_multi_get`].
pub const CACHE_MULTI_GET: &str = "/v1/cache/{namespace}/_mget";
/// `GET`, no token: liveness.
pub const HEALTHZ: &str = "/healthz";
/// `GET`, no token: readiness and the sync store's facts.
pub const READYZ: &str = "/readyz";
/// `GET`, no token: Prometheus metrics.
pub const METRICS: &str = "/metrics";

/// The pull path for one page of at most `limit` changes after `cursor` (none: from the start).
pub fn pull(limit: usize, cursor: Option<&str>) -> String {
    let mut path = format!("{PULL}?limit={limit}");
    if let Some(cursor) = cursor {
        path.push_str("&cursor=");
        path.push_str(&percent_encode(cursor));
    }
    path
}

/// The multi-get path of `namespace`.
pub fn cache_multi_get(namespace: Namespace) -> String {
    CACHE_MULTI_GET.replace("{namespace}", namespace.name())
}

/// Query-string encoding for the opaque cursor (unreserved characters pass through).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concrete_paths() {
        assert_eq!(pull(100, None), "/v1/sync/pull?limit=100");
        assert_eq!(
            pull(5, Some("YzF8MS0wfA")),
            "/v1/sync/pull?limit=5&cursor=YzF8MS0wfA"
        );
        assert_eq!(
            cache_multi_get(Namespace::UserCache),
            "/v1/cache/user_cache/_mget"
        );
    }

    #[test]
    fn cursor_is_query_safe() {
        assert_eq!(percent_encode("a+b/c=="), "a%2Bb%2Fc%3D%3D");
        assert_eq!(percent_encode("0-1_2.3~"), "0-1_2.3~");
    }
}
