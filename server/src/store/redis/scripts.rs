//! The Redis store's Lua scripts and how they are run.
//!
//! Writes that must be all-or-nothing run as scripts, which Redis executes atomically: the push
//! (dedup markers and up-stream entries together), the publish (down-stream entries with ids
//! from one per-tenant sequence) and the rate check (tenant and device GCRA together). The push
//! goes through [`eval_script`], which builds its command in one presized buffer; the others go
//! through redis-rs's `Script`.

use redis::aio::ConnectionManager;
use redis::{RedisError, Script};

/// Exactly-once append of a batch. KEYS: (marker, stream) per item. ARGV: marker TTL (s), then
/// per item its `item` metadata (JSON) and its payload. Returns, per item, 1 when stored now or
/// 0 when stored earlier.
///
/// Per item: `SET marker NX EX` claims the id; only a successful claim appends the entry. The
/// first write of the script is a `SET`, so a Redis out of memory refuses the whole batch before
/// anything is written. Should an `XADD` fail after its claim (a key of the wrong type, say), the
/// claim is released before the error is raised, so a marker never stands for a missing entry;
/// items earlier in the batch stay stored and answer `duplicate` when the device retries.
///
/// An entry has two fields, `item` and `payload`, rather than one field per attribute: every
/// argument a script passes to `redis.call` is converted twice (Redis string to Lua and back),
/// and with nine fields that conversion cost more than the `XADD` itself (measured, see
/// docs/benchmarks.md).
pub(super) const PUSH_SCRIPT: &str = r"
local ttl = ARGV[1]
local out = {}
for i = 1, #KEYS / 2 do
  local seen = KEYS[2 * i - 1]
  if redis.call('SET', seen, '1', 'NX', 'EX', ttl) then
    local id = redis.pcall('XADD', KEYS[2 * i], '*', 'item', ARGV[2 * i], 'payload', ARGV[2 * i + 1])
    if type(id) == 'table' and id.err then
      redis.call('DEL', seen)
      return redis.error_reply(id.err)
    end
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
";

/// All-or-nothing publish. KEYS: the target stream per change, then the tenant's last-id key.
/// ARGV: MINID threshold, then seven fields per change (the last, ttl_secs, empty when absent).
/// Returns the entry ids.
///
/// Entry ids are chosen here, not by `*`: every down stream of a tenant takes its ids from one
/// per-tenant sequence (`last-id`), so ids are totally ordered across the tenant-wide stream and
/// all device streams, and a pull merges them in exactly the order they were published.
pub(super) const PUBLISH_SCRIPT: &str = r"
local minid = ARGV[1]
local last_key = KEYS[#KEYS]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ms, seq = 0, -1
local last = redis.call('GET', last_key)
if last then
  local a, b = string.match(last, '^(%d+)-(%d+)$')
  ms, seq = tonumber(a), tonumber(b)
end
local out = {}
for i = 1, #KEYS - 1 do
  if now > ms then ms, seq = now, 0 else seq = seq + 1 end
  local id = string.format('%d-%d', ms, seq)
  local a = 1 + (i - 1) * 7
  local fields = {'namespace', ARGV[a + 1], 'key', ARGV[a + 2], 'op', ARGV[a + 3],
    'encoding', ARGV[a + 4], 'value', ARGV[a + 5], 'published_at_ms', ARGV[a + 6]}
  if ARGV[a + 7] ~= '' then
    fields[#fields + 1] = 'ttl_secs'
    fields[#fields + 1] = ARGV[a + 7]
  end
  out[i] = redis.call('XADD', KEYS[i], 'MINID', '~', minid, id, unpack(fields))
end
redis.call('SET', last_key, out[#out])
return out
";

/// GCRA for the tenant and the device at once, on Redis's clock so every server instance agrees.
/// KEYS: tenant state, device state. ARGV: tenant rate/s, device rate/s (0 = unlimited). Returns
/// the waits in microseconds; both zero means allowed, and only then does the state move.
pub(super) const RATE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function check(key, per_sec)
  if per_sec <= 0 then return 0, nil end
  local interval = math.floor(1000000 / per_sec)
  local v = redis.call('GET', key)
  local tat = now
  if v then tat = math.max(tonumber(v), now) end
  local new_tat = tat + interval
  local allow_at = new_tat - per_sec * interval
  if now < allow_at then return allow_at - now, nil end
  return 0, new_tat
end
local w1, t1 = check(KEYS[1], tonumber(ARGV[1]))
local w2, t2 = check(KEYS[2], tonumber(ARGV[2]))
if w1 > 0 or w2 > 0 then return {w1, w2} end
if t1 then
  redis.call('SET', KEYS[1], string.format('%d', t1), 'PX', string.format('%d', math.ceil((t1 - now) / 1000) + 1000))
end
if t2 then
  redis.call('SET', KEYS[2], string.format('%d', t2), 'PX', string.format('%d', math.ceil((t2 - now) / 1000) + 1000))
end
return {0, 0}
";

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
