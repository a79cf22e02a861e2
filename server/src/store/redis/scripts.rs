//! The Redis store's Lua scripts.
//!
//! Writes that must be all-or-nothing and that native commands cannot express run as scripts,
//! which Redis executes atomically: the publish (down-stream entries with ids from one
//! per-tenant sequence) and the rate check (tenant and device GCRA together). They run through
//! redis-rs's `Script` (`EVALSHA`, loading the script on `NOSCRIPT`). The push is not a script:
//! see `push.rs`.

/// All-or-nothing publish, with entry ids from the tenant's one down-stream sequence.
/// Keys, arguments, answer and the reasons for its shape: in `scripts/publish.lua`.
pub(super) const PUBLISH_SCRIPT: &str = include_str!("scripts/publish.lua");

/// GCRA for the tenant and the device at once, on Redis's clock.
/// Keys, arguments, answer and the reasons for its shape: in `scripts/rate.lua`.
pub(super) const RATE_SCRIPT: &str = include_str!("scripts/rate.lua");
