//! How the server reaches Redis: the credentials every data-node connection uses and the TLS
//! material for `rediss://` URLs (a private CA, a client certificate for mutual TLS).
//!
//! Every client of the store is built here ([`RedisAccess::client`], and the Cluster builder),
//! so the cache, the sync store, the Sentinels and every Cluster node are reached the same way.
//! The password lives in a [`Secret`], whose `Debug` and `Display` print `<redacted>`: it is in
//! no log line, error, `/readyz` or `check` output (the integration test searches them all).

use std::fmt;

use redis::cluster::ClusterClientBuilder;
use redis::{Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisError};

fn tls_ready() {
    crate::tls::install_crypto_provider();
}

/// A string that never prints.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// PEM bytes of the TLS material, read from the files the settings name.
#[derive(Clone, Default)]
pub struct TlsMaterial {
    /// CA certificates to trust instead of the system's roots (a private CA).
    pub ca: Option<Vec<u8>>,
    /// Certificate chain and private key the server presents (mutual TLS).
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca", &self.ca.as_ref().map(|_| "<pem>"))
            .field("client", &self.client.as_ref().map(|_| "<pem>"))
            .finish()
    }
}

impl TlsMaterial {
    fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.ca.clone(),
        }
    }

    fn is_empty(&self) -> bool {
        self.ca.is_none() && self.client.is_none()
    }
}

/// Credentials and TLS material for the store's connections.
#[derive(Clone, Debug, Default)]
pub struct RedisAccess {
    /// The ACL user (`AUTH user password`); with a password but no user, `AUTH password`.
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub tls: TlsMaterial,
}

impl RedisAccess {
    /// A client for `info`: this access's credentials unless the URL carries its own, and this
    /// access's TLS material when the URL is `rediss://`.
    pub fn client(&self, info: ConnectionInfo) -> Result<Client, RedisError> {
        tls_ready();
        let info = self.with_credentials(info);
        if matches!(info.addr(), ConnectionAddr::TcpTls { .. }) && !self.tls.is_empty() {
            Client::build_with_tls(info, self.tls.certificates())
        } else {
            Client::open(info)
        }
    }

    /// A client for a Sentinel at `url`: the TLS material, but only the credentials the URL
    /// carries (a Sentinel has its own, often none, and refuses an `AUTH` it did not ask for).
    pub fn sentinel_client(&self, url: &str) -> Result<Client, RedisError> {
        tls_ready();
        let info = url.into_connection_info()?;
        if matches!(info.addr(), ConnectionAddr::TcpTls { .. }) && !self.tls.is_empty() {
            Client::build_with_tls(info, self.tls.certificates())
        } else {
            Client::open(info)
        }
    }

    /// A Cluster client builder over `seeds` with this access's credentials and TLS material.
    pub fn cluster_builder(&self, seeds: &[String]) -> Result<ClusterClientBuilder, RedisError> {
        tls_ready();
        let seeds = seeds
            .iter()
            .map(|s| s.as_str().into_connection_info())
            .collect::<Result<Vec<_>, _>>()?;
        let tls = seeds
            .iter()
            .any(|s| matches!(s.addr(), ConnectionAddr::TcpTls { .. }));
        let mut builder = ClusterClientBuilder::new(seeds);
        if let Some(user) = &self.username {
            builder = builder.username(user.clone());
        }
        if let Some(password) = &self.password {
            builder = builder.password(password.expose());
        }
        if tls && !self.tls.is_empty() {
            builder = builder.certs(self.tls.certificates());
        }
        Ok(builder)
    }

    fn with_credentials(&self, info: ConnectionInfo) -> ConnectionInfo {
        let settings = info.redis_settings().clone();
        if settings.password().is_some() || self.password.is_none() {
            return info;
        }
        let mut settings = match &self.password {
            Some(password) => settings.set_password(password.expose()),
            None => settings,
        };
        if settings.username().is_none()
            && let Some(user) = &self.username
        {
            settings = settings.set_username(user);
        }
        info.set_redis_settings(settings)
    }
}

/// `template` (its settings, TLS and credentials) at another address, `host:port`.
pub fn at(template: &ConnectionInfo, addr: &str) -> Result<ConnectionInfo, String> {
    let (host, port) = addr
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
        .ok_or_else(|| format!("bad node address {addr}"))?;
    let addr = match template.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host,
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host, port),
    };
    Ok(template.clone().set_addr(addr))
}

/// Whether `url` is `rediss://` (TLS).
pub fn is_tls(url: &str) -> bool {
    url.into_connection_info()
        .is_ok_and(|info| matches!(info.addr(), ConnectionAddr::TcpTls { .. }))
}

/// Whether `url` names a loopback host (`127.0.0.0/8`, `::1`, `localhost`).
pub fn is_loopback(url: &str) -> bool {
    let Ok(info) = url.into_connection_info() else {
        return false;
    };
    let host = match info.addr() {
        ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } => host.as_str(),
        ConnectionAddr::Unix(_) => return true,
        _ => return false,
    };
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `url` without its password (`redis://user:…@host:port/db` keeps the user), for output.
pub fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((auth, host)) => {
                let user = auth.split_once(':').map_or(auth, |(user, _)| user);
                format!("{scheme}://{user}:<redacted>@{host}")
            }
            None => url.to_owned(),
        },
        None => "<unparsable url>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let access = RedisAccess {
            username: Some("kryonix".into()),
            password: Some(Secret::new("hunter2-secret")),
            tls: TlsMaterial {
                ca: Some(b"-----BEGIN CERTIFICATE-----".to_vec()),
                client: None,
            },
        };
        let shown = format!("{access:?} {}", access.password.as_ref().unwrap());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("BEGIN"), "{shown}");
        assert_eq!(
            redacted("redis://app:hunter2@cache:6379/2"),
            "redis://app:<redacted>@cache:6379/2"
        );
        assert_eq!(
            redacted("rediss://:hunter2@cache:6380"),
            "rediss://:<redacted>@cache:6380"
        );
        assert_eq!(redacted("redis://cache:6379"), "redis://cache:6379");
    }

    #[test]
    fn credentials_apply_unless_the_url_has_its_own() {
        let access = RedisAccess {
            username: Some("kryonix".into()),
            password: Some(Secret::new("from-env")),
            tls: TlsMaterial::default(),
        };
        let info =
            access.with_credentials("redis://127.0.0.1:6379".into_connection_info().unwrap());
        assert_eq!(info.redis_settings().password(), Some("from-env"));
        assert_eq!(info.redis_settings().username(), Some("kryonix"));
        let own = access.with_credentials(
            "redis://u:own@127.0.0.1:6379"
                .into_connection_info()
                .unwrap(),
        );
        assert_eq!(own.redis_settings().password(), Some("own"));
        assert_eq!(own.redis_settings().username(), Some("u"));
    }

    #[test]
    fn another_address_keeps_tls_and_settings() {
        let tls = "rediss://:pw@10.0.0.1:6380/3"
            .into_connection_info()
            .unwrap();
        let moved = at(&tls, "10.0.0.2:7000").unwrap();
        assert!(
            matches!(moved.addr(), ConnectionAddr::TcpTls { host, port: 7000, .. } if host == "10.0.0.2")
        );
        assert_eq!(moved.redis_settings().password(), Some("pw"));
        assert_eq!(moved.redis_settings().db(), 3);
        let plain = "redis://10.0.0.1:6379".into_connection_info().unwrap();
        assert!(matches!(
            at(&plain, "h:1").unwrap().addr(),
            ConnectionAddr::Tcp(..)
        ));
        assert!(at(&plain, "no-port").is_err());
        assert!(is_tls("rediss://h:1") && !is_tls("redis://h:1"));
    }
}
