//! Which servers the agent's HTTP client trusts: by default the platform's roots (Android's and
//! Apple's own trust stores, through `rustls-platform-verifier`), or only an app-supplied CA
//! (a private PKI), and optionally pinned public keys on top — what phones do in practice.
//!
//! A pin is the SHA-256 of a certificate's SubjectPublicKeyInfo, written `sha256/<base64>` (the
//! form of HPKP and OkHttp's `CertificatePinner`). The chain must verify first; then at least
//! one certificate of the chain the server presented — or one of the app's own CAs, which the
//! server need not send — must match a pin. Pin the key of the CA
//! that issues the server's certificates (and a backup key) so that certificate renewals do not
//! break the app. A server that fails either check is refused before any request is sent:
//! the agent reports it as `Untrusted` and keeps every queued item.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// Why a trust setting cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("server CA: {0}")]
    BadCa(String),
    #[error("pin {0:?} is not sha256/<base64 of 32 bytes>")]
    BadPin(String),
    #[error("cannot set up TLS: {0}")]
    Setup(String),
}

/// A pinned public key: SHA-256 of a SubjectPublicKeyInfo.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpkiPin(pub [u8; 32]);

impl fmt::Debug for SpkiPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256/{}", STANDARD.encode(self.0))
    }
}

impl FromStr for SpkiPin {
    type Err = TrustError;

    /// `sha256/<base64>` (or the base64 alone).
    fn from_str(s: &str) -> Result<Self, TrustError> {
        let text = s.trim();
        let encoded = text.strip_prefix("sha256/").unwrap_or(text);
        let bytes = STANDARD
            .decode(encoded)
            .map_err(|_| TrustError::BadPin(s.to_owned()))?;
        let hash: [u8; 32] = bytes
            .try_into()
            .map_err(|_| TrustError::BadPin(s.to_owned()))?;
        Ok(Self(hash))
    }
}

impl SpkiPin {
    /// The pin of a DER certificate's public key.
    pub fn of_certificate(der: &[u8]) -> Result<Self, TrustError> {
        let cert = CertificateDer::from(der.to_vec());
        let parsed = webpki::EndEntityCert::try_from(&cert)
            .map_err(|e| TrustError::BadCa(format!("not a certificate: {e:?}")))?;
        Ok(Self(
            Sha256::digest(parsed.subject_public_key_info().as_ref()).into(),
        ))
    }
}

/// The agent's trust settings for the server (`AgentConfig::server_trust`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerTrust {
    /// PEM CA certificates: trust only these (not the platform's roots).
    pub ca_pem: Option<Vec<u8>>,
    /// Pinned keys; empty means no pinning.
    pub pins: Vec<SpkiPin>,
}

impl ServerTrust {
    /// Whether these are the defaults (the platform's roots, no pins).
    pub fn is_default(&self) -> bool {
        self.ca_pem.is_none() && self.pins.is_empty()
    }

    /// The TLS client settings that enforce this trust.
    pub(crate) fn client_config(&self) -> Result<rustls::ClientConfig, TrustError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let base: Arc<dyn ServerCertVerifier> = match &self.ca_pem {
            Some(pem) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| TrustError::BadCa(e.to_string()))?;
                    roots
                        .add(cert)
                        .map_err(|e| TrustError::BadCa(e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(TrustError::BadCa("no CERTIFICATE in the PEM".into()));
                }
                rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::clone(&provider),
                )
                .build()
                .map_err(|e| TrustError::Setup(e.to_string()))?
            }
            None => Arc::new(
                rustls_platform_verifier::Verifier::new(Arc::clone(&provider))
                    .map_err(|e| TrustError::Setup(e.to_string()))?,
            ),
        };
        // Keys of the app's own CAs count for the pins too: a server rarely sends its root.
        let anchors = match &self.ca_pem {
            Some(pem) => CertificateDer::pem_slice_iter(pem)
                .filter_map(Result::ok)
                .filter_map(|cert| SpkiPin::of_certificate(cert.as_ref()).ok())
                .collect(),
            None => Vec::new(),
        };
        let verifier = Pinned {
            base,
            pins: self.pins.clone(),
            anchors,
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TrustError::Setup(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(config)
    }
}

/// The base verification, then the pins (when there are any).
#[derive(Debug)]
struct Pinned {
    base: Arc<dyn ServerCertVerifier>,
    pins: Vec<SpkiPin>,
    /// Keys of the app's CAs, one of which anchored the chain the base verifier accepted.
    anchors: Vec<SpkiPin>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.base.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if self.pins.is_empty() {
            return Ok(verified);
        }
        let matches = std::iter::once(end_entity)
            .chain(intermediates)
            .filter_map(|cert| SpkiPin::of_certificate(cert.as_ref()).ok())
            .chain(self.anchors.iter().copied())
            .any(|pin| self.pins.contains(&pin));
        if matches {
            Ok(verified)
        } else {
            Err(rustls::Error::General(
                "no certificate of the server's chain matches a pinned key".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.base.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.base.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.base.supported_verify_schemes()
    }
}

/// The TLS error under `error` (a request's), if any: the chain is followed through
/// `source()` and into `io::Error`s, whose `source()` skips the error they carry.
pub(crate) fn tls_error<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            // The carried error itself next (it may be another io::Error wrapping rustls's).
            current = Some(inner);
            continue;
        }
        current = e.source();
    }
    None
}

/// Whether `error` (a request's) is the server's certificate being refused.
pub(crate) fn is_untrusted(error: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        tls_error(error),
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::General(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_in_both_forms_and_refuse_the_rest() {
        let b64 = STANDARD.encode([7u8; 32]);
        assert_eq!(
            format!("sha256/{b64}").parse::<SpkiPin>().unwrap(),
            SpkiPin([7; 32])
        );
        assert_eq!(b64.parse::<SpkiPin>().unwrap(), SpkiPin([7; 32]));
        for bad in ["", "sha256/", "sha256/AAAA", "not base64!", "sha1/abc"] {
            assert!(bad.parse::<SpkiPin>().is_err(), "{bad}");
        }
        assert_eq!(format!("{:?}", SpkiPin([7; 32])), format!("sha256/{b64}"));
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let trust = ServerTrust {
            ca_pem: Some(b"not a pem".to_vec()),
            pins: vec![],
        };
        assert!(matches!(trust.client_config(), Err(TrustError::BadCa(_))));
    }
}
