//! Everything the Kryonix device core and the Kryonix server must agree on, with no I/O.
//!
//! Both sides compile this crate, so a rule changed here changes on both at once: the table of
//! sixteen namespaces, the tenant key format and its validation, the priority tiers, the device
//! and network profiles that drive adaptive TTLs and compression, the bounded codec, the HTTP
//! routes and the JSON wire types.
//!
//! # Layout
//!
//! - [`codec`]: bounded gzip/lz4 encode and decode, `Content-Encoding` and `Accept-Encoding`
//!   parsing, the device's compression policy.
//! - [`namespace`]: the sixteen namespaces (id, name, default TTL, budget, eviction policy).
//! - [`key`]: `tenant:{tenant}:{namespace}:{key}` — building, parsing, validating.
//! - [`profile`]: priority tiers, device and network classes, adaptive TTL, compression choice.
//! - [`routes`]: the HTTP paths, and builders for the concrete paths a device sends.
//! - [`wire`]: request and response bodies of the HTTP API, and the error body.

pub mod codec;
pub mod key;
pub mod namespace;
pub mod profile;
pub mod routes;
pub mod version;
pub mod wire;

pub use key::{KeyError, MAX_KEY_LEN, TenantId, TenantKey};
pub use namespace::{EvictionPolicy, Namespace, NamespaceInfo, UnknownNamespace};
pub use profile::{
    COMPRESSION_THRESHOLD, DeviceClass, DeviceProfile, Encoding, NetworkClass, NetworkProfile,
    Tier, TierInfo, UnknownEncoding, adaptive_ttl, default_ttl,
};
pub use version::{AppVersion, InvalidAppVersion, MAX_APP_VERSION_LEN};

/// Version of the wire protocol. The device sends it in the `Kryonix-Protocol` header; the server
/// refuses any other version with `unsupported_protocol`. Version 2 numbers items per producer
/// and tier (`seq`) and adds the hello; version 1 (per-item dedup markers) is not spoken.
pub const PROTOCOL_VERSION: u32 = 2;

/// The oldest protocol version a server of this build serves. An older device is answered
/// `426 upgrade_required` (it must be updated); a newer one `400 unsupported_protocol` (the
/// server must be).
pub const MIN_PROTOCOL_VERSION: u32 = 2;

/// Name of the HTTP header in which the agent states the app's version ([`AppVersion`]), when
/// the app configured it; a server with a `min_app_version` answers older apps
/// `426 upgrade_required`.
pub const APP_VERSION_HEADER: &str = "kryonix-app-version";

/// Name of the HTTP header that carries [`PROTOCOL_VERSION`].
pub const PROTOCOL_HEADER: &str = "kryonix-protocol";

/// Name of the HTTP header in which a device states its profile (`phone;cellular-slow`), so the
/// server can pick the same adaptive TTL as the device would.
pub const DEVICE_PROFILE_HEADER: &str = "kryonix-device-profile";
