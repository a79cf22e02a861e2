//! Talking to `kryonix-server` over HTTP: the [`Transport`] trait the driver uses, and its real
//! implementation on reqwest (rustls).
//!
//! The transport turns every HTTP outcome into what the engine needs to know: the parsed answer,
//! or a [`FailureKind`] that says whether and when to try again. A 401 refreshes the token once
//! through the app's [`TokenProvider`] and retries; only a second 401 reaches the engine.
//! Bodies above the compression threshold are compressed per the device profile — gzip on phones
//! and tablets (fewest bytes on the radio), lz4 on desktops (cheapest CPU) — with the matching
//! `Content-Encoding`; answers are asked for gzip-encoded.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kryonix_protocol::wire::{
    CacheEntry, ErrorBody, HelloRequest, HelloResponse, MultiGetRequest, MultiGetResponse,
    PullResponse, PushItem, PushRequest, PushResponse,
};
use kryonix_protocol::{
    APP_VERSION_HEADER, AppVersion, COMPRESSION_THRESHOLD, DEVICE_PROFILE_HEADER, DeviceProfile,
    Encoding, Namespace, PROTOCOL_HEADER, PROTOCOL_VERSION,
};
use kryonix_protocol::{codec, routes};
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};

use super::engine::{FailureKind, UpgradeRequired};
use crate::outbox::OutboxItem;

/// The largest answer body accepted after decompression.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Supplies bearer tokens. Implemented by the app (it owns sign-in). Called on the runtime's
/// blocking pool, never on a worker thread: it may block (a refresh over the network), but it is
/// asked before every request, so keep the current token and refresh only when `refresh` is set.
pub trait TokenProvider: Send + Sync + Debug {
    /// A token for the server; `refresh` is true after the server refused the previous one.
    fn token(&self, refresh: bool) -> Result<String, TokenError>;
}

/// Why a [`TokenProvider`] has no token. The kind decides what the agent reports: only
/// `SignInRequired` means "sign the user in again"; `Unavailable` is retried like a network
/// failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The user must sign in again (the refresh token was revoked or expired).
    #[error("sign-in required: {0}")]
    SignInRequired(String),
    /// No token right now (the identity provider is unreachable, a refresh timed out).
    #[error("no token for now: {0}")]
    Unavailable(String),
}

/// A fixed token (tests, tools, and apps that manage refresh themselves).
#[derive(Debug, Clone)]
pub struct StaticToken(pub String);

impl TokenProvider for StaticToken {
    fn token(&self, _refresh: bool) -> Result<String, TokenError> {
        Ok(self.0.clone())
    }
}

/// A failed request, classified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TransportError {
    pub kind: FailureKind,
    pub message: String,
}

impl TransportError {
    fn retryable(message: impl Into<String>, retry_after: Option<Duration>) -> Self {
        Self {
            kind: FailureKind::Retryable { retry_after },
            message: message.into(),
        }
    }
}

/// What a push answer carried besides the results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushReply {
    pub response: PushResponse,
    /// Request body bytes as sent on the wire.
    pub bytes_sent: u64,
    /// Request body bytes before compression.
    pub bytes_raw: u64,
}

/// The network side of the driver. Object-safe futures are not needed: the driver is generic.
pub trait Transport: Send + Sync + 'static {
    /// Uploads one batch; every item of it has the same producer.
    fn push(
        &self,
        items: &[OutboxItem],
        profile: DeviceProfile,
    ) -> impl Future<Output = Result<PushReply, TransportError>> + Send;

    /// Asks where the server stands with `producer` (the session's hello before its first push).
    fn hello(
        &self,
        producer: &str,
    ) -> impl Future<Output = Result<HelloResponse, TransportError>> + Send;

    fn pull(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<PullResponse, TransportError>> + Send;

    /// Reads keys from the server's L2 cache (read-through); `None` for a miss.
    fn cache_get_many(
        &self,
        namespace: Namespace,
        keys: &[String],
        profile: DeviceProfile,
    ) -> impl Future<Output = Result<Vec<Option<CacheEntry>>, TransportError>> + Send;
}

/// The real transport: HTTP/JSON with reqwest and rustls.
#[derive(Debug, Clone)]
pub struct HttpTransport {
    client: reqwest::Client,
    base: String,
    tokens: Arc<dyn TokenProvider>,
    /// Sent as `kryonix-app-version` when set (already validated as an [`AppVersion`]).
    app_version: Option<HeaderValue>,
}

impl HttpTransport {
    /// `base_url` like `https://sync.example.com` (no trailing path).
    pub fn new(
        base_url: &str,
        tokens: Arc<dyn TokenProvider>,
        timeout: Duration,
    ) -> Result<Self, TransportError> {
        Self::with_trust(
            base_url,
            tokens,
            timeout,
            &super::trust::ServerTrust::default(),
        )
    }

    /// Like [`Self::new`], trusting the server as `trust` says (an app CA, pinned keys).
    pub fn with_trust(
        base_url: &str,
        tokens: Arc<dyn TokenProvider>,
        timeout: Duration,
        trust: &super::trust::ServerTrust,
    ) -> Result<Self, TransportError> {
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(90));
        if !trust.is_default() {
            let config = trust.client_config().map_err(|e| TransportError {
                kind: FailureKind::Untrusted,
                message: e.to_string(),
            })?;
            builder = builder.tls_backend_preconfigured(config);
        }
        let client = builder.build().map_err(|e| TransportError {
            kind: FailureKind::Retryable { retry_after: None },
            message: format!("cannot build the HTTP client: {e}"),
        })?;
        Ok(Self {
            client,
            base: base_url.trim_end_matches('/').to_owned(),
            tokens,
            app_version: None,
        })
    }

    /// States the app's version in every request, for the server's upgrade gate.
    pub fn with_app_version(mut self, version: Option<AppVersion>) -> Self {
        // A parsed version is printable ASCII without spaces, so always a valid header value.
        self.app_version = version.and_then(|v| HeaderValue::from_str(v.as_str()).ok());
        self
    }

    /// Asks the app for a token on the runtime's blocking pool: a provider that refreshes over
    /// the network may take seconds, and on a worker thread it would stall every agent's sync
    /// (the bindings' runtime has two workers).
    async fn token(&self, refresh: bool) -> Result<String, TransportError> {
        let tokens = Arc::clone(&self.tokens);
        let answer = tokio::task::spawn_blocking(move || tokens.token(refresh))
            .await
            .map_err(|e| TransportError {
                // The provider panicked (or the runtime is shutting down): not the user's
                // credentials, so not "sign in again".
                kind: FailureKind::Retryable { retry_after: None },
                message: format!("the token provider failed: {e}"),
            })?;
        answer.map_err(|e| TransportError {
            kind: match e {
                TokenError::SignInRequired(_) => FailureKind::Unauthorized,
                TokenError::Unavailable(_) => FailureKind::Retryable { retry_after: None },
            },
            message: e.to_string(),
        })
    }

    /// Sends one request, refreshing the token once on 401. Returns the decoded answer body.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(Vec<u8>, Encoding)>,
        profile: Option<DeviceProfile>,
    ) -> Result<Vec<u8>, TransportError> {
        let mut refresh = false;
        loop {
            let token = self.token(refresh).await?;
            let mut headers = HeaderMap::new();
            headers.insert(PROTOCOL_HEADER, HeaderValue::from(PROTOCOL_VERSION));
            headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
            if let Some(version) = &self.app_version {
                headers.insert(APP_VERSION_HEADER, version.clone());
            }
            if let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) {
                headers.insert(header::AUTHORIZATION, value);
            }
            if let Some(profile) = profile
                && let Ok(value) = HeaderValue::from_str(&profile.to_string())
            {
                headers.insert(DEVICE_PROFILE_HEADER, value);
            }
            let mut request = self
                .client
                .request(method.clone(), format!("{}{path}", self.base));
            if let Some((bytes, encoding)) = &body {
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                if *encoding != Encoding::Identity {
                    headers.insert(
                        header::CONTENT_ENCODING,
                        HeaderValue::from_static(encoding.as_str()),
                    );
                }
                request = request.body(bytes.clone());
            }
            let response = request.headers(headers).send().await.map_err(|e| {
                if super::trust::is_untrusted(&e) {
                    TransportError {
                        kind: FailureKind::Untrusted,
                        message: format!(
                            "{method} {path}: the server's certificate was refused: {}",
                            super::trust::tls_error(&e)
                                .map_or_else(|| e.to_string(), ToString::to_string)
                        ),
                    }
                } else {
                    TransportError::retryable(format!("{} {path}: {e}", method), None)
                }
            })?;
            let status = response.status();
            let retry_after = retry_after(response.headers());
            let gzipped = response
                .headers()
                .get(header::CONTENT_ENCODING)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
            let bytes = response
                .bytes()
                .await
                .map_err(|e| TransportError::retryable(format!("reading the answer: {e}"), None))?;
            let bytes = if gzipped {
                codec::decode(Encoding::Gzip, &bytes, MAX_RESPONSE_BYTES).map_err(|e| {
                    TransportError::retryable(format!("undecodable answer: {e}"), None)
                })?
            } else {
                bytes.to_vec()
            };
            if status.is_success() {
                return Ok(bytes);
            }
            if status == StatusCode::UNAUTHORIZED && !refresh {
                refresh = true;
                continue;
            }
            let body = serde_json::from_slice::<ErrorBody>(&bytes).ok();
            let message = body.as_ref().map_or_else(
                || format!("HTTP {}", status.as_u16()),
                |b| {
                    format!(
                        "{} ({}): {}",
                        status.as_u16(),
                        b.error.code,
                        b.error.message
                    )
                },
            );
            let kind = match status {
                StatusCode::UPGRADE_REQUIRED => {
                    let detail = body.map(|b| b.error);
                    FailureKind::UpgradeRequired(UpgradeRequired {
                        min_protocol: detail.as_ref().and_then(|d| d.min_protocol),
                        min_app_version: detail.and_then(|d| d.min_app_version),
                    })
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => FailureKind::Unauthorized,
                StatusCode::PAYLOAD_TOO_LARGE => FailureKind::TooLarge,
                // Everything else — 429, 5xx, and even a 4xx that should not happen — is retried
                // later: an accepted item is never dropped because of one odd answer.
                _ => FailureKind::Retryable { retry_after },
            };
            return Err(TransportError { kind, message });
        }
    }
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// The JSON body, compressed per the device class when it is over the threshold and
/// compression actually shrinks it.
fn encode_body(json: Vec<u8>, profile: DeviceProfile) -> (Vec<u8>, Encoding) {
    if json.len() > COMPRESSION_THRESHOLD {
        let encoding = profile.device.compression();
        if let Ok(compressed) = codec::encode(encoding, &json)
            && compressed.len() < json.len()
        {
            return (compressed, encoding);
        }
    }
    (json, Encoding::Identity)
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, TransportError> {
    serde_json::from_slice(bytes)
        .map_err(|e| TransportError::retryable(format!("unreadable answer: {e}"), None))
}

impl Transport for HttpTransport {
    async fn push(
        &self,
        items: &[OutboxItem],
        profile: DeviceProfile,
    ) -> Result<PushReply, TransportError> {
        let request = PushRequest {
            producer: items
                .first()
                .map(|i| i.producer.clone())
                .unwrap_or_default(),
            items: items.iter().map(push_item).collect(),
        };
        let json = serde_json::to_vec(&request)
            .map_err(|e| TransportError::retryable(format!("encoding the push: {e}"), None))?;
        let bytes_raw = json.len() as u64;
        let (body, encoding) = encode_body(json, profile);
        let bytes_sent = body.len() as u64;
        let answer = self
            .send(
                Method::POST,
                routes::PUSH,
                Some((body, encoding)),
                Some(profile),
            )
            .await?;
        Ok(PushReply {
            response: parse(&answer)?,
            bytes_sent,
            bytes_raw,
        })
    }

    async fn hello(&self, producer: &str) -> Result<HelloResponse, TransportError> {
        let json = serde_json::to_vec(&HelloRequest {
            producer: producer.to_owned(),
        })
        .map_err(|e| TransportError::retryable(format!("encoding the hello: {e}"), None))?;
        let answer = self
            .send(
                Method::POST,
                routes::HELLO,
                Some((json, Encoding::Identity)),
                None,
            )
            .await?;
        parse(&answer)
    }

    async fn pull(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<PullResponse, TransportError> {
        let path = routes::pull(limit, cursor);
        let answer = self.send(Method::GET, &path, None, None).await?;
        parse(&answer)
    }

    async fn cache_get_many(
        &self,
        namespace: Namespace,
        keys: &[String],
        profile: DeviceProfile,
    ) -> Result<Vec<Option<CacheEntry>>, TransportError> {
        let json = serde_json::to_vec(&MultiGetRequest {
            keys: keys.to_vec(),
        })
        .map_err(|e| TransportError::retryable(format!("encoding the request: {e}"), None))?;
        let path = routes::cache_multi_get(namespace);
        let answer = self
            .send(
                Method::POST,
                &path,
                Some((json, Encoding::Identity)),
                Some(profile),
            )
            .await?;
        Ok(parse::<MultiGetResponse>(&answer)?.entries)
    }
}

fn push_item(item: &OutboxItem) -> PushItem {
    PushItem {
        id: item.id.to_string(),
        seq: item.seq,
        tier: item.tier.number(),
        namespace: item.namespace.name().to_owned(),
        key: item.key.clone(),
        op: item.op,
        payload: item.payload.clone(),
        encoding: Encoding::Identity,
        created_at_ms: item.created_at,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Hands out `old` until asked to refresh, then `new`; records every call.
    #[derive(Debug)]
    struct RotatingToken {
        calls: Mutex<Vec<bool>>,
    }

    impl TokenProvider for RotatingToken {
        fn token(&self, refresh: bool) -> Result<String, TokenError> {
            self.calls.lock().unwrap().push(refresh);
            Ok(if refresh { "new" } else { "old" }.to_owned())
        }
    }

    /// A one-route HTTP/1.1 responder at the transport edge: `401` unless the bearer token is
    /// `new`, then an empty push answer. Returns the `Authorization` headers it saw.
    async fn auth_server(answers: usize) -> (String, tokio::task::JoinHandle<Vec<String>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..answers {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 64 * 1024];
                let mut len = 0;
                // Read until the end of the headers plus the announced body.
                loop {
                    let n = socket.read(&mut buf[len..]).await.unwrap();
                    len += n;
                    let text = String::from_utf8_lossy(&buf[..len]).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let body_len = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if len >= end + 4 + body_len || n == 0 {
                            break;
                        }
                    }
                }
                let text = String::from_utf8_lossy(&buf[..len]).to_string();
                let auth = text
                    .lines()
                    .find_map(|l| l.strip_prefix("authorization: "))
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
                let response = if auth == "Bearer new" {
                    let body = r#"{"results":[]}"#;
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    let body = r#"{"error":{"code":"unauthorized","message":"expired"}}"#;
                    format!(
                        "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                seen.push(auth);
                socket.write_all(response.as_bytes()).await.unwrap();
                socket.shutdown().await.ok();
            }
            seen
        });
        (url, task)
    }

    #[tokio::test]
    async fn a_401_refreshes_the_token_once_and_retries() {
        let (url, server) = auth_server(2).await;
        let tokens = Arc::new(RotatingToken {
            calls: Mutex::new(Vec::new()),
        });
        let transport = HttpTransport::new(&url, tokens.clone(), Duration::from_secs(5)).unwrap();
        let reply = transport.push(&[], DeviceProfile::default()).await.unwrap();
        assert!(reply.response.results.is_empty());
        assert_eq!(server.await.unwrap(), ["Bearer old", "Bearer new"]);
        assert_eq!(*tokens.calls.lock().unwrap(), [false, true]);
    }

    #[derive(Debug)]
    struct AlwaysOld;

    impl TokenProvider for AlwaysOld {
        fn token(&self, _refresh: bool) -> Result<String, TokenError> {
            Ok("old".into())
        }
    }

    #[tokio::test]
    async fn a_second_401_is_unauthorized_not_a_loop() {
        let (url, server) = auth_server(2).await;
        let transport =
            HttpTransport::new(&url, Arc::new(AlwaysOld), Duration::from_secs(5)).unwrap();
        let err = transport
            .push(&[], DeviceProfile::default())
            .await
            .unwrap_err();
        assert_eq!(err.kind, FailureKind::Unauthorized);
        assert!(err.message.contains("401"), "{}", err.message);
        assert_eq!(server.await.unwrap().len(), 2);
    }

    /// Fails every call the same way.
    #[derive(Debug)]
    struct NoToken(TokenError);

    impl TokenProvider for NoToken {
        fn token(&self, _refresh: bool) -> Result<String, TokenError> {
            Err(self.0.clone())
        }
    }

    #[tokio::test]
    async fn only_a_provider_saying_sign_in_required_makes_the_device_unauthorized() {
        let (url, _server) = auth_server(0).await;
        for (failure, kind) in [
            (
                TokenError::SignInRequired("refresh token revoked".into()),
                FailureKind::Unauthorized,
            ),
            (
                TokenError::Unavailable("identity provider unreachable".into()),
                FailureKind::Retryable { retry_after: None },
            ),
        ] {
            let provider = Arc::new(NoToken(failure.clone()));
            let transport = HttpTransport::new(&url, provider, Duration::from_secs(2)).unwrap();
            let err = transport
                .push(&[], DeviceProfile::default())
                .await
                .unwrap_err();
            assert_eq!(err.kind, kind, "{failure:?}");
            assert_eq!(err.message, failure.to_string());
        }
    }

    #[tokio::test]
    async fn an_unreachable_server_is_retryable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let transport =
            HttpTransport::new(&url, Arc::new(AlwaysOld), Duration::from_secs(2)).unwrap();
        let err = transport
            .push(&[], DeviceProfile::default())
            .await
            .unwrap_err();
        assert!(
            matches!(err.kind, FailureKind::Retryable { retry_after: None }),
            "{err:?}"
        );
    }

    #[test]
    fn retry_after_seconds() {
        let mut h = HeaderMap::new();
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn large_bodies_are_compressed_per_device_small_ones_not() {
        let phone = DeviceProfile::default();
        let (small, encoding) = encode_body(b"{}".to_vec(), phone);
        assert_eq!(
            (small.as_slice(), encoding),
            (&b"{}"[..], Encoding::Identity)
        );
        let big = serde_json::to_vec(&vec!["same text again"; 200]).unwrap();
        for (device, expected) in [
            (kryonix_protocol::DeviceClass::Phone, Encoding::Gzip),
            (kryonix_protocol::DeviceClass::Tablet, Encoding::Gzip),
            (kryonix_protocol::DeviceClass::Desktop, Encoding::Lz4),
        ] {
            let profile = DeviceProfile { device, ..phone };
            let (body, encoding) = encode_body(big.clone(), profile);
            assert_eq!(encoding, expected);
            assert!(body.len() < big.len());
            assert_eq!(codec::decode(encoding, &body, 1 << 20).unwrap(), big);
        }
    }
}
