//! The Redis store's Lua scripts and how they are run.
//!
//! Writes that must be all-or-nothing run as scripts, which Redis executes atomically: the push
//! (dedup markers and up-stream entries together), the publish (down-stream entries with ids
//! from one per-tenant sequence) and the rate check (tenant and device GCRA together). The push
//! goes through [`eval_script`], which builds its command in one presized buffer; the others go
//! through redis-rs's `Script`.

use redis::aio::ConnectionManager;
use redis::{RedisError, Script};

/// Exactly-once append of a push batch: dedup markers and up-stream entries together.
/// Keys, arguments, answer and the reasons for its shape: in `scripts/push.lua`.
pub(super) const PUSH_SCRIPT: &str = include_str!("scripts/push.lua");

/// All-or-nothing publish, with entry ids from the tenant's one down-stream sequence.
/// Keys, arguments, answer and the reasons for its shape: in `scripts/publish.lua`.
pub(super) const PUBLISH_SCRIPT: &str = include_str!("scripts/publish.lua");

/// GCRA for the tenant and the device at once, on Redis's clock.
/// Keys, arguments, answer and the reasons for its shape: in `scripts/rate.lua`.
pub(super) const RATE_SCRIPT: &str = include_str!("scripts/rate.lua");

/// Runs a script by its hash, loading it with `EVAL` when Redis does not know it yet (after a
/// restart or a `SCRIPT FLUSH`). `fill` appends `numkeys`, the keys and the arguments.
pub(super) async fn eval_script<T: redis::FromRedisValue>(
    con: &mut ConnectionManager,
    script: &Script,
    source: &str,
    arg_count: usize,
    data_len: usize,
    fill: impl Fn(&mut redis::Cmd),
) -> Result<T, RedisError> {
    let mut cmd = redis::Cmd::with_capacity(arg_count, data_len);
    cmd.arg("EVALSHA").arg(script.get_hash());
    fill(&mut cmd);
    match cmd.query_async(con).await {
        Err(err) if err.code() == Some("NOSCRIPT") => {
            let mut cmd = redis::Cmd::with_capacity(arg_count, data_len + source.len());
            cmd.arg("EVAL").arg(source);
            fill(&mut cmd);
            cmd.query_async(con).await
        }
        other => other,
    }
}
