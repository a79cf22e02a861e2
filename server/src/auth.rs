//! Bearer tokens: HS256 JWTs naming a tenant, a subject (device or service) and a scope.
//!
//! The tenant of every request comes from here and only from here: no handler reads a tenant
//! from a body, a path or a query. Devices hold `device` tokens (push, pull, cache); backends
//! hold `service` tokens (publish, cache, revoke).
//!
//! Every token minted here carries a `jti` (a UUID), so that it can be revoked before it
//! expires: the revocation is kept in the `auth_tokens` namespace until the token's `exp`, and
//! every request checks it (`api::authenticate`). Tokens without a `jti` (minted elsewhere)
//! are accepted and cannot be revoked one by one; rotate the secret to end them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use kryonix_protocol::TenantId;
use serde::{Deserialize, Serialize};

/// Why a token was refused or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("the token has expired")]
    Expired,
    #[error("invalid token")]
    Invalid,
    #[error("the token's tenant is not a valid tenant id")]
    BadTenant,
    #[error("the token's subject is not a valid device or service id")]
    BadSubject,
    #[error("the token's id (jti) is not valid")]
    BadId,
    #[error("cannot sign a token: {0}")]
    Signing(String),
}

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// A device: push, pull, cache.
    Device,
    /// A backend: publish, cache.
    Service,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::Service => "service",
        }
    }
}

/// The JWT claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub tenant: String,
    /// Device id (device scope) or service name (service scope).
    pub sub: String,
    pub scope: Scope,
    pub iat: u64,
    pub exp: u64,
    /// The token's id, for revocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant: TenantId,
    pub subject: String,
    pub scope: Scope,
    /// The token's id, when it has one (tokens minted here always do).
    pub jti: Option<String>,
    /// The token's expiry, Unix seconds: how long a revocation of it must be kept.
    pub expires_at: u64,
}

/// Longest device or service id: it becomes part of Redis keys.
pub const MAX_SUBJECT_LEN: usize = 64;

/// Device ids end up in stream and rate-limit keys, so they follow the tenant-part rules
/// (non-empty, no `:`, no control characters) and a length limit.
pub fn valid_subject(subject: &str) -> bool {
    !subject.is_empty()
        && subject.len() <= MAX_SUBJECT_LEN
        && !subject.chars().any(|c| c == ':' || c.is_control())
}

/// A token id becomes part of a Redis key: the subject's rules apply.
pub fn valid_token_id(jti: &str) -> bool {
    valid_subject(jti)
}

/// Signs and checks tokens with one shared secret — and, during a rotation, also accepts tokens
/// signed with the previous one until a given time.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// The secret being rotated out, and until when (Unix seconds; `None`: until removed).
    previous: Option<(DecodingKey, Option<u64>)>,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("TokenKeys").finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TokenKeys {
    pub fn new(secret: &[u8], leeway: Duration) -> Self {
        // Only HS256: a token naming another algorithm (`none`, RS256 with the secret as a
        // public key) is refused by the validation.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = leeway.as_secs();
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            previous: None,
        }
    }

    /// Also accepts tokens signed with `secret` (the one being rotated out) until `until` (Unix
    /// seconds), so that tokens minted before the rotation keep working while they live. New
    /// tokens are always signed with the current secret.
    pub fn with_previous(mut self, secret: &[u8], until: Option<u64>) -> Self {
        self.previous = Some((DecodingKey::from_secret(secret), until));
        self
    }

    /// Makes a token valid for `ttl` from now.
    pub fn mint(
        &self,
        tenant: &TenantId,
        subject: &str,
        scope: Scope,
        ttl: Duration,
    ) -> Result<String, AuthError> {
        if !valid_subject(subject) {
            return Err(AuthError::BadSubject);
        }
        let iat = now_secs();
        let claims = Claims {
            tenant: tenant.as_str().to_owned(),
            sub: subject.to_owned(),
            scope,
            iat,
            exp: iat.saturating_add(ttl.as_secs()),
            jti: Some(uuid::Uuid::now_v7().to_string()),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Signing(e.to_string()))
    }

    /// Checks a token and returns who it speaks for (revocation is the store's to check).
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        self.decode(token, &self.validation)
    }

    /// Who a token signed with this secret speaks for, even if it has expired: what a
    /// revocation needs (its tenant, id and expiry). Forged tokens are still refused.
    pub fn inspect(&self, token: &str) -> Result<Principal, AuthError> {
        let mut validation = self.validation.clone();
        validation.validate_exp = false;
        self.decode(token, &validation)
    }

    fn decode(&self, token: &str, validation: &Validation) -> Result<Principal, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let mut decoded = jsonwebtoken::decode::<Claims>(token, &self.decoding, validation);
        // Another signature may be the previous secret's, while the rotation window is open.
        if let (Err(e), Some((previous, until))) = (&decoded, &self.previous)
            && matches!(e.kind(), ErrorKind::InvalidSignature)
            && until.is_none_or(|until| now_secs() < until)
        {
            decoded = jsonwebtoken::decode::<Claims>(token, previous, validation);
        }
        let data = decoded.map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid,
        })?;
        let claims = data.claims;
        if claims
            .jti
            .as_deref()
            .is_some_and(|jti| !valid_token_id(jti))
        {
            return Err(AuthError::BadId);
        }
        let tenant = TenantId::new(claims.tenant).map_err(|_| AuthError::BadTenant)?;
        if !valid_subject(&claims.sub) {
            return Err(AuthError::BadSubject);
        }
        Ok(Principal {
            tenant,
            subject: claims.sub,
            scope: claims.scope,
            jti: claims.jti,
            expires_at: claims.exp,
        })
    }

    /// Reads `Authorization: Bearer <token>`.
    pub fn verify_header(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        let value = header.ok_or(AuthError::Missing)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(AuthError::Missing)?;
        self.verify(token.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TokenKeys {
        TokenKeys::new(b"0123456789abcdef0123456789abcdef", Duration::ZERO)
    }

    #[test]
    fn every_minted_token_has_its_own_id() {
        let tenant = TenantId::new("acme").unwrap();
        let mint = || {
            let token = keys()
                .mint(&tenant, "phone-1", Scope::Device, Duration::from_secs(60))
                .unwrap();
            keys().verify(&token).unwrap().jti.unwrap()
        };
        let (a, b) = (mint(), mint());
        assert_ne!(a, b);
        assert!(valid_token_id(&a), "{a}");
    }

    #[test]
    fn during_a_rotation_the_previous_secret_is_accepted_until_its_time() {
        let tenant = TenantId::new("acme").unwrap();
        let old = keys();
        let new_secret = b"the-new-secret-the-new-secret-xyz";
        let before = old
            .mint(&tenant, "phone-1", Scope::Device, Duration::from_secs(60))
            .unwrap();
        let rotating = TokenKeys::new(new_secret, Duration::ZERO)
            .with_previous(b"0123456789abcdef0123456789abcdef", Some(now_secs() + 3600));
        assert_eq!(rotating.verify(&before).unwrap().subject, "phone-1");
        // New tokens carry the new secret: the old keys refuse them.
        let after = rotating
            .mint(&tenant, "phone-1", Scope::Device, Duration::from_secs(60))
            .unwrap();
        assert!(rotating.verify(&after).is_ok());
        assert!(matches!(old.verify(&after), Err(AuthError::Invalid)));
        // Once the window has closed, the old secret's tokens are refused.
        let closed = TokenKeys::new(new_secret, Duration::ZERO)
            .with_previous(b"0123456789abcdef0123456789abcdef", Some(now_secs() - 1));
        assert!(matches!(closed.verify(&before), Err(AuthError::Invalid)));
        // A third secret is never accepted.
        let other = TokenKeys::new(b"another-secret-another-secret-xx", Duration::ZERO)
            .mint(&tenant, "d", Scope::Device, Duration::from_secs(60))
            .unwrap();
        assert!(matches!(rotating.verify(&other), Err(AuthError::Invalid)));
    }

    #[test]
    fn round_trip() {
        let tenant = TenantId::new("acme").unwrap();
        let token = keys()
            .mint(&tenant, "phone-1", Scope::Device, Duration::from_secs(60))
            .unwrap();
        let p = keys()
            .verify_header(Some(&format!("Bearer {token}")))
            .unwrap();
        assert_eq!(p.tenant, tenant);
        assert_eq!(p.subject, "phone-1");
        assert_eq!(p.scope, Scope::Device);
    }

    #[test]
    fn forged_expired_and_malformed_tokens_fail() {
        let tenant = TenantId::new("acme").unwrap();
        let other = TokenKeys::new(b"another-secret-another-secret-xx", Duration::ZERO);
        let forged = other
            .mint(&tenant, "d", Scope::Service, Duration::from_secs(60))
            .unwrap();
        assert!(matches!(keys().verify(&forged), Err(AuthError::Invalid)));

        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                tenant: "acme".into(),
                sub: "d".into(),
                scope: Scope::Device,
                iat: 1,
                exp: 2,
                jti: Some("old-token".into()),
            },
            &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        )
        .unwrap();
        assert!(matches!(keys().verify(&expired), Err(AuthError::Expired)));
        // Expired but genuine: inspectable, for a revocation; a forged one is not.
        let seen = keys().inspect(&expired).unwrap();
        assert_eq!(
            (seen.jti.as_deref(), seen.expires_at),
            (Some("old-token"), 2)
        );
        assert!(matches!(keys().inspect(&forged), Err(AuthError::Invalid)));
        assert!(matches!(keys().verify("a.b.c"), Err(AuthError::Invalid)));
        assert!(matches!(
            keys().verify_header(None),
            Err(AuthError::Missing)
        ));
        assert!(matches!(
            keys().verify_header(Some("Basic abc")),
            Err(AuthError::Missing)
        ));
        assert!(
            keys()
                .mint(&tenant, "a:b", Scope::Device, Duration::from_secs(1))
                .is_err()
        );
    }
}
