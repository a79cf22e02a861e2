//! The production store: Redis, one logical database per namespace.
//!
//! The cache namespaces live in databases 0–15 of one Redis (`--redis-url`); mobile_sync (DB 11)
//! may live on its own noeviction + AOF instance (`--sync-redis-url`). Each database gets its own
//! [`ConnectionManager`]: a multiplexed connection that reconnects by itself, so a `SELECT` never
//! races between concurrent requests.
//!
//! Writes that must be all-or-nothing run as Lua scripts, which Redis executes atomically. The
//! push script claims each item's dedup marker and appends the item to its tier's up stream. A
//! script is refused for memory only before its first write, so a push batch is either stored
//! whole or not at all when Redis is full.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kryonix_protocol::wire::{Change, Op};
use kryonix_protocol::{Encoding, Namespace, TenantId};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo, RedisError, Script};

use super::{
    Cached, Cursor, NewChange, NewItem, Page, RateDecision, Rates, StoreError, SyncStoreFacts,
};
use crate::keys;

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
const PUSH_SCRIPT: &str = r"
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
const PUBLISH_SCRIPT: &str = r"
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
const RATE_SCRIPT: &str = r"
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

/// Redis behind the server.
#[derive(Clone)]
pub struct RedisStore {
    sync: ConnectionManager,
    /// One per namespace, indexed by namespace id.
    cache: Arc<Vec<ConnectionManager>>,
    push_script: Arc<Script>,
    publish_script: Arc<Script>,
    rate_script: Arc<Script>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

/// Maps a Redis error to what a handler acts on.
pub fn classify(err: &RedisError) -> StoreError {
    if err.code() == Some("OOM") || err.to_string().contains("OOM command not allowed") {
        return StoreError::OutOfMemory;
    }
    if err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || matches!(
            err.code(),
            Some("LOADING" | "READONLY" | "MASTERDOWN" | "TRYAGAIN" | "CLUSTERDOWN" | "BUSY")
        )
    {
        return StoreError::Unavailable(err.to_string());
    }
    StoreError::Internal(err.to_string())
}

fn map(err: RedisError) -> StoreError {
    classify(&err)
}

fn key_err(err: kryonix_protocol::KeyError) -> StoreError {
    // Handlers validate every part first, so a key that fails here is a bug.
    StoreError::Internal(format!("server-built key refused: {err}"))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Opens a client on one logical database of `url` (whatever database the URL names).
pub fn client_for_db(url: &str, db: i64) -> Result<Client, RedisError> {
    let info = url.into_connection_info()?;
    let settings = info.redis_settings().clone().set_db(db);
    Client::open(info.set_redis_settings(settings))
}

async fn manager(url: &str, db: i64) -> Result<ConnectionManager, StoreError> {
    let client = client_for_db(url, db).map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        // Longer than any WAIT the server issues, shorter than a device's patience.
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_number_of_retries(2);
    ConnectionManager::new_with_config(client, config)
        .await
        .map_err(map)
}

/// The `item` field of an up stream entry (JSON): everything about the item but its payload,
/// which is the entry's `payload` field, raw bytes.
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ItemMetadata {
    pub id: String,
    pub device_id: String,
    pub tier: u8,
    pub namespace: String,
    pub key: String,
    pub op: Op,
    pub encoding: Encoding,
    pub created_at_ms: i64,
}

/// Borrowing twin of [`ItemMetadata`], to serialize without copying.
#[derive(serde::Serialize)]
struct ItemMetadataRef<'a> {
    id: &'a str,
    device_id: &'a str,
    tier: u8,
    namespace: &'a str,
    key: &'a str,
    op: Op,
    encoding: Encoding,
    created_at_ms: i64,
}

fn item_metadata(item: &NewItem, device: &str) -> Result<String, StoreError> {
    serde_json::to_string(&ItemMetadataRef {
        id: &item.id,
        device_id: device,
        tier: item.tier.number(),
        namespace: item.namespace.name(),
        key: &item.key,
        op: item.op,
        encoding: item.encoding,
        created_at_ms: item.created_at_ms,
    })
    .map_err(|e| StoreError::Internal(format!("encoding item metadata: {e}")))
}

/// Runs a script by its hash, loading it with `EVAL` when Redis does not know it yet (after a
/// restart or a `SCRIPT FLUSH`). `fill` appends `numkeys`, the keys and the arguments.
async fn eval_script<T: redis::FromRedisValue>(
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

/// A stream entry id as a comparable pair.
fn parse_entry_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

type RawEntry = (String, Vec<Vec<u8>>);

fn field<'a>(fields: &'a HashMap<&str, &'a [u8]>, name: &str) -> Result<&'a [u8], StoreError> {
    fields
        .get(name)
        .copied()
        .ok_or_else(|| StoreError::Internal(format!("down stream entry without {name}")))
}

fn text(bytes: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| StoreError::Internal("down stream field is not UTF-8".into()))
}

/// Turns a down stream entry back into a [`Change`].
fn change_from_entry(prefix: &str, (id, flat): RawEntry) -> Result<Change, StoreError> {
    let fields: HashMap<&str, &[u8]> = flat
        .chunks(2)
        .filter_map(|pair| match pair {
            [name, value] => std::str::from_utf8(name)
                .ok()
                .map(|n| (n, value.as_slice())),
            _ => None,
        })
        .collect();
    let op_text = text(field(&fields, "op")?)?;
    let op = Op::parse(&op_text)
        .ok_or_else(|| StoreError::Internal(format!("unknown op {op_text:?}")))?;
    let encoding = text(field(&fields, "encoding")?)?
        .parse::<Encoding>()
        .map_err(|e| StoreError::Internal(e.to_string()))?;
    let number = |name: &str| -> Result<Option<i64>, StoreError> {
        match fields.get(name) {
            None => Ok(None),
            Some(v) => text(v)?
                .parse()
                .map(Some)
                .map_err(|_| StoreError::Internal(format!("{name} is not a number"))),
        }
    };
    Ok(Change {
        id: format!("{prefix}/{id}"),
        namespace: text(field(&fields, "namespace")?)?,
        key: text(field(&fields, "key")?)?,
        op,
        value: field(&fields, "value")?.to_vec(),
        encoding,
        ttl_secs: number("ttl_secs")?.and_then(|v| u64::try_from(v).ok()),
        published_at_ms: number("published_at_ms")?.unwrap_or(0),
    })
}

/// Parses `INFO` text into its `field:value` lines.
pub fn parse_info(info: &str) -> HashMap<String, String> {
    info.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.trim_end().split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

impl RedisStore {
    /// Connects to every database. `sync_url` defaults to `cache_url`; mobile_sync is always
    /// database 11 of its instance, so backends find the streams in the same place everywhere.
    pub async fn connect(cache_url: &str, sync_url: Option<&str>) -> Result<Self, StoreError> {
        let mut cache = Vec::with_capacity(16);
        for ns in Namespace::all() {
            cache.push(manager(cache_url, keys::database(ns)).await?);
        }
        let sync_db = keys::database(Namespace::MobileSync);
        let sync = match sync_url {
            Some(url) => manager(url, sync_db).await?,
            None => cache
                .get(usize::from(Namespace::MobileSync.id()))
                .cloned()
                .ok_or_else(|| StoreError::Internal("no mobile_sync connection".into()))?,
        };
        Ok(Self {
            sync,
            cache: Arc::new(cache),
            push_script: Arc::new(Script::new(PUSH_SCRIPT)),
            publish_script: Arc::new(Script::new(PUBLISH_SCRIPT)),
            rate_script: Arc::new(Script::new(RATE_SCRIPT)),
        })
    }

    fn cache_con(&self, namespace: Namespace) -> Result<ConnectionManager, StoreError> {
        self.cache
            .get(usize::from(namespace.id()))
            .cloned()
            .ok_or_else(|| StoreError::Internal("no connection for namespace".into()))
    }

    pub async fn push(
        &self,
        tenant: &TenantId,
        device: &str,
        items: &[NewItem],
        dedup_ttl: Duration,
    ) -> Result<Vec<bool>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        // Keys first, then arguments, as EVALSHA wants them. Built straight into one presized
        // command: a ScriptInvocation would allocate every argument on its own and copy it
        // twice, which showed up in profiles for 100-item batches.
        let mut markers = Vec::with_capacity(items.len());
        let mut streams = Vec::with_capacity(items.len());
        let mut metadata = Vec::with_capacity(items.len());
        let mut data_len = 0;
        for item in items {
            let marker = keys::seen_marker(tenant, &item.id).map_err(key_err)?;
            let stream = keys::up_stream(tenant, item.tier).map_err(key_err)?;
            let meta = item_metadata(item, device)?;
            data_len +=
                marker.as_str().len() + stream.as_str().len() + meta.len() + item.payload.len();
            markers.push(marker);
            streams.push(stream);
            metadata.push(meta);
        }
        let ttl = dedup_ttl.as_secs().max(1).to_string();
        let fill = |cmd: &mut redis::Cmd| {
            cmd.arg(items.len() * 2);
            for (marker, stream) in markers.iter().zip(&streams) {
                cmd.arg(marker.as_str()).arg(stream.as_str());
            }
            cmd.arg(&ttl);
            for (meta, item) in metadata.iter().zip(items) {
                cmd.arg(meta).arg(item.payload.as_slice());
            }
        };
        let mut con = self.sync.clone();
        let stored: Vec<i64> = eval_script(
            &mut con,
            &self.push_script,
            PUSH_SCRIPT,
            4 + items.len() * 4,
            data_len + 128,
            fill,
        )
        .await
        .map_err(map)?;
        if stored.len() != items.len() {
            return Err(StoreError::Internal(format!(
                "push script answered {} results for {} items",
                stored.len(),
                items.len()
            )));
        }
        Ok(stored.into_iter().map(|new| new == 1).collect())
    }

    pub async fn pull(
        &self,
        tenant: &TenantId,
        device: &str,
        cursor: &Cursor,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let start = |pos: &str| -> Result<String, StoreError> {
            if pos.is_empty() {
                Ok("-".to_owned())
            } else if parse_entry_id(pos).is_some() {
                Ok(format!("({pos}"))
            } else {
                Err(StoreError::BadCursor)
            }
        };
        let tenant_key = keys::down_stream(tenant).map_err(key_err)?;
        let device_key = keys::device_down_stream(tenant, device).map_err(key_err)?;
        let fetch = limit + 1;
        let mut pipe = redis::pipe();
        pipe.cmd("XRANGE")
            .arg(tenant_key.as_str())
            .arg(start(&cursor.tenant)?)
            .arg("+")
            .arg("COUNT")
            .arg(fetch)
            .cmd("XRANGE")
            .arg(device_key.as_str())
            .arg(start(&cursor.device)?)
            .arg("+")
            .arg("COUNT")
            .arg(fetch);
        let mut con = self.sync.clone();
        let (wide, own): (Vec<RawEntry>, Vec<RawEntry>) =
            pipe.query_async(&mut con).await.map_err(map)?;

        // Merge the two streams by entry id: ids come from one per-tenant sequence (see the
        // publish script), so this is publication order.
        let mut wide = wide.into_iter().peekable();
        let mut own = own.into_iter().peekable();
        let mut next = cursor.clone();
        let mut changes = Vec::new();
        while changes.len() < limit {
            let take_wide = match (wide.peek(), own.peek()) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(w), Some(o)) => parse_entry_id(&w.0) <= parse_entry_id(&o.0),
            };
            let (prefix, entry) = if take_wide {
                ("t", wide.next())
            } else {
                ("d", own.next())
            };
            let Some(entry) = entry else { break };
            if take_wide {
                next.tenant.clone_from(&entry.0);
            } else {
                next.device.clone_from(&entry.0);
            }
            changes.push(change_from_entry(prefix, entry)?);
        }
        let has_more = wide.peek().is_some() || own.peek().is_some();
        Ok(Page {
            changes,
            next,
            has_more,
        })
    }

    pub async fn publish(
        &self,
        tenant: &TenantId,
        device: Option<&str>,
        changes: &[NewChange],
        retention: Duration,
    ) -> Result<Vec<String>, StoreError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let (stream, prefix) = match device {
            Some(d) => (keys::device_down_stream(tenant, d).map_err(key_err)?, "d"),
            None => (keys::down_stream(tenant).map_err(key_err)?, "t"),
        };
        let now = now_ms();
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let min_id = format!("{}-0", now.saturating_sub(retention_ms).max(0));
        let mut invocation = self.publish_script.prepare_invoke();
        invocation.arg(min_id);
        for change in changes {
            invocation
                .key(stream.as_str())
                .arg(change.namespace.name())
                .arg(&change.key)
                .arg(change.op.as_str())
                .arg(change.encoding.as_str())
                .arg(change.value.as_slice())
                .arg(now)
                .arg(change.ttl_secs.map(|t| t.to_string()).unwrap_or_default());
        }
        invocation.key(keys::down_last_id(tenant).map_err(key_err)?.as_str());
        let mut con = self.sync.clone();
        let ids: Vec<String> = invocation.invoke_async(&mut con).await.map_err(map)?;
        Ok(ids.into_iter().map(|id| format!("{prefix}/{id}")).collect())
    }

    pub async fn cache_get(
        &self,
        tenant: &TenantId,
        namespace: Namespace,
        keys_in: &[String],
    ) -> Result<Vec<Option<Cached>>, StoreError> {
        let mut pipe = redis::pipe();
        for key in keys_in {
            let full = keys::cache_entry(tenant, namespace, key).map_err(key_err)?;
            pipe.cmd("GET")
                .arg(full.as_str())
                .cmd("PTTL")
                .arg(full.as_str());
        }
        let mut con = self.cache_con(namespace)?;
        let replies: Vec<redis::Value> = pipe.query_async(&mut con).await.map_err(map)?;
        replies
            .chunks(2)
            .map(|pair| match pair {
                [redis::Value::Nil, _] => Ok(None),
                [value, ttl] => {
                    let bytes: Vec<u8> = redis::from_redis_value_ref(value)
                        .map_err(|e| StoreError::Internal(e.to_string()))?;
                    let pttl: i64 = redis::from_redis_value_ref(ttl)
                        .map_err(|e| StoreError::Internal(e.to_string()))?;
                    decode_cached(&bytes, pttl).map(Some)
                }
                _ => Err(StoreError::Internal("odd cache reply".into())),
            })
            .collect()
    }

    pub async fn cache_put(
        &self,
        tenant: &TenantId,
        namespace: Namespace,
        key: &str,
        value: &[u8],
        encoding: Encoding,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let full = keys::cache_entry(tenant, namespace, key).map_err(key_err)?;
        let mut stored = Vec::with_capacity(value.len() + 1);
        stored.push(encoding.tag());
        stored.extend_from_slice(value);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut con = self.cache_con(namespace)?;
        redis::cmd("SET")
            .arg(full.as_str())
            .arg(stored)
            .arg("PX")
            .arg(ttl_ms)
            .query_async::<()>(&mut con)
            .await
            .map_err(map)
    }

    pub async fn cache_delete(
        &self,
        tenant: &TenantId,
        namespace: Namespace,
        key: &str,
    ) -> Result<(), StoreError> {
        let full = keys::cache_entry(tenant, namespace, key).map_err(key_err)?;
        let mut con = self.cache_con(namespace)?;
        redis::cmd("DEL")
            .arg(full.as_str())
            .query_async::<()>(&mut con)
            .await
            .map_err(map)
    }

    pub async fn rate_limit(
        &self,
        tenant: &TenantId,
        subject: &str,
        rates: Rates,
    ) -> Result<RateDecision, StoreError> {
        let mut con = self.cache_con(Namespace::RateLimiting)?;
        let (tenant_wait, device_wait): (i64, i64) = self
            .rate_script
            .key(keys::tenant_rate(tenant).map_err(key_err)?.as_str())
            .key(
                keys::device_rate(tenant, subject)
                    .map_err(key_err)?
                    .as_str(),
            )
            .arg(rates.tenant_per_sec)
            .arg(rates.device_per_sec)
            .invoke_async(&mut con)
            .await
            .map_err(map)?;
        Ok(decision(tenant_wait, device_wait))
    }

    pub async fn memory_pressure(&self) -> Result<Option<f64>, StoreError> {
        let facts = self.sync_facts().await?;
        Ok(match (facts.used_memory, facts.maxmemory) {
            (Some(used), Some(max)) if max > 0 => Some(used as f64 / max as f64),
            _ => None,
        })
    }

    pub async fn wait_replicas(&self, replicas: u32, timeout: Duration) -> Result<u32, StoreError> {
        let mut con = self.sync.clone();
        let timeout_ms = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let acked: i64 = redis::cmd("WAIT")
            .arg(replicas)
            .arg(timeout_ms)
            .query_async(&mut con)
            .await
            .map_err(map)?;
        Ok(u32::try_from(acked).unwrap_or(0))
    }

    pub async fn sync_facts(&self) -> Result<SyncStoreFacts, StoreError> {
        let mut con = self.sync.clone();
        // INFO works where CONFIG is renamed or forbidden (managed Redis).
        let info: String = redis::cmd("INFO")
            .query_async(&mut con)
            .await
            .map_err(map)?;
        Ok(facts_from_info(&parse_info(&info)))
    }
}

/// Reads the facts start-up checks need from parsed `INFO`.
pub fn facts_from_info(info: &HashMap<String, String>) -> SyncStoreFacts {
    let number = |k: &str| info.get(k).and_then(|v| v.parse::<u64>().ok());
    let flag = |k: &str| info.get(k).map(|v| v == "1");
    SyncStoreFacts {
        kind: "redis",
        redis_version: info.get("redis_version").cloned(),
        maxmemory_policy: info.get("maxmemory_policy").cloned(),
        maxmemory: number("maxmemory"),
        used_memory: number("used_memory"),
        aof_enabled: flag("aof_enabled"),
        cluster_enabled: flag("cluster_enabled"),
    }
}

pub(crate) fn decision(tenant_wait_us: i64, device_wait_us: i64) -> RateDecision {
    let micros = |w: i64| Duration::from_micros(u64::try_from(w).unwrap_or(0));
    if tenant_wait_us > 0 && tenant_wait_us >= device_wait_us {
        RateDecision::Limited {
            scope: "tenant",
            retry_after: micros(tenant_wait_us),
        }
    } else if device_wait_us > 0 {
        RateDecision::Limited {
            scope: "device",
            retry_after: micros(device_wait_us),
        }
    } else {
        RateDecision::Allowed
    }
}

/// A cached value is stored as one encoding tag byte followed by the value.
fn decode_cached(bytes: &[u8], pttl_ms: i64) -> Result<Cached, StoreError> {
    let (&tag, value) = bytes
        .split_first()
        .ok_or_else(|| StoreError::Internal("empty cache value".into()))?;
    let encoding = Encoding::from_tag(tag)
        .ok_or_else(|| StoreError::Internal(format!("cache value with unknown tag {tag}")))?;
    Ok(Cached {
        value: value.to_vec(),
        encoding,
        // -1: no expiry. Round up so a value with 300 ms left does not report 0.
        ttl_secs: u64::try_from(pttl_ms).ok().map(|ms| ms.div_ceil(1000)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_parsing_reads_the_safety_facts() {
        let info = "# Server\r\nredis_version:7.0.15\r\n# Memory\r\nused_memory:1000\r\nmaxmemory:4000\r\nmaxmemory_policy:noeviction\r\n# Persistence\r\naof_enabled:1\r\n# Cluster\r\ncluster_enabled:0\r\n";
        let facts = facts_from_info(&parse_info(info));
        assert_eq!(facts.redis_version.as_deref(), Some("7.0.15"));
        assert_eq!(facts.maxmemory_policy.as_deref(), Some("noeviction"));
        assert_eq!(facts.used_memory, Some(1000));
        assert_eq!(facts.maxmemory, Some(4000));
        assert_eq!(facts.aof_enabled, Some(true));
        assert_eq!(facts.cluster_enabled, Some(false));
    }

    /// The `item` field is a storage format backends parse: pin it byte for byte.
    #[test]
    fn item_metadata_format_is_stable() {
        let item = NewItem {
            id: "0193a1f0-7c2e-7b61-9d1a-3f4e5a6b7c8d".into(),
            tier: kryonix_protocol::Tier::Application,
            namespace: Namespace::FileMetadata,
            key: "doc:7".into(),
            op: Op::Delete,
            payload: b"ignored".to_vec(),
            encoding: Encoding::Gzip,
            created_at_ms: 1_764_000_000_000,
        };
        assert_eq!(
            item_metadata(&item, "phone-1").unwrap(),
            r#"{"id":"0193a1f0-7c2e-7b61-9d1a-3f4e5a6b7c8d","device_id":"phone-1","tier":3,"namespace":"file_metadata","key":"doc:7","op":"delete","encoding":"gzip","created_at_ms":1764000000000}"#
        );
        let back: ItemMetadata =
            serde_json::from_str(&item_metadata(&item, "phone-1").unwrap()).unwrap();
        assert_eq!(back.tier, 3);
        assert_eq!(back.op, Op::Delete);
    }

    #[test]
    fn entry_ids_order_numerically() {
        assert!(parse_entry_id("9-1") < parse_entry_id("10-0"));
        assert!(parse_entry_id("10-2") > parse_entry_id("10-1"));
        assert_eq!(parse_entry_id("x-1"), None);
        assert_eq!(parse_entry_id("10"), None);
    }

    #[test]
    fn cached_values_carry_their_tag() {
        let c = decode_cached(&[1, b'x'], 1500).unwrap();
        assert_eq!(c.encoding, Encoding::Gzip);
        assert_eq!(c.value, b"x");
        assert_eq!(c.ttl_secs, Some(2));
        assert_eq!(decode_cached(&[0], -1).unwrap().ttl_secs, None);
        assert!(decode_cached(&[], 10).is_err());
        assert!(decode_cached(&[9, 1], 10).is_err());
    }

    #[test]
    fn rate_decisions_name_the_tighter_scope() {
        assert_eq!(decision(0, 0), RateDecision::Allowed);
        assert!(matches!(
            decision(5, 0),
            RateDecision::Limited {
                scope: "tenant",
                ..
            }
        ));
        assert!(matches!(
            decision(0, 5),
            RateDecision::Limited {
                scope: "device",
                ..
            }
        ));
    }
}
