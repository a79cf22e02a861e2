//! Fuzz targets for every parser that takes bytes from a device or a backend: the push and
//! publish bodies (through the same bounded decoding and validation the server runs), the gzip
//! and lz4 decoders with their size bounds, the pull cursor, the bearer-token header and the
//! device-profile header (with the app-version header, the other header a device sets).
//!
//! Each target is a plain function: `src/bin/*` hands it to AFL (`scripts/fuzz`), and the tests
//! below replay every file of `corpus/<target>/` through it, so every input AFL once found
//! interesting — and every crash, once added there — stays a regression test in `cargo test`.
//! A target panics only when an invariant breaks: a decoder returning more than its bound, a
//! value that does not survive its own round trip.

use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use kryonix_protocol::codec;
use kryonix_protocol::wire::{PublishRequest, PushRequest};
use kryonix_protocol::{AppVersion, DeviceProfile, Encoding, Namespace, TenantId, TenantKey};
use kryonix_server::auth::{Principal, Scope, TokenKeys};
use kryonix_server::store::{Cursor, EmbeddedStore, Store};
use kryonix_server::{AppState, ServerConfig};

/// The decoded-size bound of the body targets: small, so AFL spends its time on structure.
pub const MAX_BODY: usize = 64 * 1024;

/// The bound of the codec target, smaller still: it decodes every input with both decoders, and
/// at 64 KiB it slowed to a few hundred executions a second.
pub const CODEC_BOUND: usize = 16 * 1024;

/// The longest input the codec target also encodes and decodes back. Encoding is not an
/// attacker's input (a device compresses its own values), and gzip's compressor under AFL's
/// instrumentation dominated the run near 16 KiB (under 1 000 executions a second). The
/// decoders, which do take attacker bytes, are still driven up to [`CODEC_BOUND`].
pub const ROUND_TRIP_BOUND: usize = 4 * 1024;

/// The body's encoding, chosen by the input's first byte, and the body.
fn split(data: &[u8]) -> (Encoding, &[u8]) {
    match data.split_first() {
        Some((0, rest)) => (Encoding::Gzip, rest),
        Some((1, rest)) => (Encoding::Lz4, rest),
        Some((_, rest)) => (Encoding::Identity, rest),
        None => (Encoding::Identity, data),
    }
}

fn decode_body(data: &[u8]) -> Option<Vec<u8>> {
    let (encoding, body) = split(data);
    match codec::decode(encoding, body, MAX_BODY) {
        Ok(bytes) => {
            assert!(bytes.len() <= MAX_BODY, "decoded past the bound");
            Some(bytes)
        }
        Err(_) => None,
    }
}

/// One server state for the process: validation reads its configuration, never its store.
fn state() -> &'static AppState {
    static STATE: OnceLock<AppState> = OnceLock::new();
    STATE.get_or_init(|| {
        // Kept (and left behind) for the process's life: validation never writes to it.
        let dir = tempfile::Builder::new()
            .prefix("kryonix-fuzz-")
            .tempdir()
            .unwrap_or_else(|e| unreachable_setup(&e.to_string()))
            .keep();
        let store = EmbeddedStore::open(&dir.join("store.sqlite3"))
            .unwrap_or_else(|e| unreachable_setup(&e.to_string()));
        let config = ServerConfig::new("fuzz-secret-fuzz-secret-fuzz-secret");
        AppState::new(config, Store::Embedded(store), Vec::new())
    })
}

/// The targets' fixed setup failed: nothing to fuzz.
fn unreachable_setup(why: &str) -> ! {
    #[allow(clippy::panic)] // a setup failure, not a finding
    {
        panic!("fuzz setup: {why}")
    }
}

fn device() -> Principal {
    Principal {
        tenant: TenantId::new("acme").unwrap_or_else(|e| unreachable_setup(&e.to_string())),
        subject: "phone-1".into(),
        scope: Scope::Device,
        jti: None,
        expires_at: u64::MAX,
    }
}

/// `POST /v1/sync/push`: bounded decoding, JSON, then the server's own validation.
pub fn push_body(data: &[u8]) {
    let Some(bytes) = decode_body(data) else {
        return;
    };
    if let Ok(request) = serde_json::from_slice::<PushRequest>(&bytes) {
        let items = request.items.len();
        if let Ok(valid) = kryonix_server::api::sync::validate_push_body(state(), device(), request)
        {
            assert!(valid <= items, "more valid items than items");
        }
    }
}

/// `POST /v1/publish`: bounded decoding, JSON, and each change's namespace and key as the
/// server checks them.
pub fn publish_body(data: &[u8]) {
    let Some(bytes) = decode_body(data) else {
        return;
    };
    if let Ok(request) = serde_json::from_slice::<PublishRequest>(&bytes) {
        let tenant = device().tenant;
        for change in &request.changes {
            if let Ok(namespace) = Namespace::from_name(&change.namespace) {
                let _ = TenantKey::new(&tenant, namespace, &change.key);
            }
        }
    }
}

/// The decoders: never more than the bound, and what is encoded decodes back.
pub fn codec(data: &[u8]) {
    for encoding in [Encoding::Gzip, Encoding::Lz4] {
        if let Ok(bytes) = codec::decode(encoding, data, CODEC_BOUND) {
            assert!(bytes.len() <= CODEC_BOUND, "{encoding:?} past the bound");
        }
        if data.len() <= ROUND_TRIP_BOUND
            && let Ok(packed) = codec::encode(encoding, data)
        {
            let back = codec::decode(encoding, &packed, CODEC_BOUND);
            assert_eq!(back.ok().as_deref(), Some(data), "{encoding:?} round trip");
        }
    }
}

/// The pull cursor: what decodes encodes back to itself.
pub fn cursor(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cursor) = Cursor::decode(text) {
        assert_eq!(
            Cursor::decode(&cursor.encode()).ok(),
            Some(cursor),
            "cursor round trip"
        );
    }
}

/// `Authorization: Bearer …`: refused or a valid principal, never a panic.
pub fn token_header(data: &[u8]) {
    static KEYS: OnceLock<TokenKeys> = OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        TokenKeys::new(
            b"fuzz-secret-fuzz-secret-fuzz-secret",
            Duration::from_secs(30),
        )
    });
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(principal) = keys.verify_header(Some(text)) {
        assert!(kryonix_server::auth::valid_subject(&principal.subject));
    }
    let _ = keys.inspect(text);
}

/// `kryonix-device-profile` and `kryonix-app-version`: what parses prints back to itself.
pub fn profile_header(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(profile) = DeviceProfile::from_str(text) {
        assert_eq!(
            DeviceProfile::from_str(&profile.to_string()).ok(),
            Some(profile),
            "profile round trip"
        );
    }
    if let Ok(version) = AppVersion::from_str(text) {
        let again = AppVersion::from_str(version.as_str()).ok();
        assert_eq!(again.as_ref(), Some(&version), "version round trip");
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn replay(target: &str, run: fn(&[u8])) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(target);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            run(&std::fs::read(&path).unwrap());
            n += 1;
        }
        assert!(n > 0, "no corpus in {}", dir.display());
    }

    #[test]
    fn the_corpus_replays_without_a_finding() {
        replay("push_body", push_body);
        replay("publish_body", publish_body);
        replay("codec", codec);
        replay("cursor", cursor);
        replay("token_header", token_header);
        replay("profile_header", profile_header);
    }
}
