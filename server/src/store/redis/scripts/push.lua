-- Exactly-once append of a batch. KEYS: (marker, stream) per item. ARGV: marker TTL (s), then
-- per item its `item` metadata (JSON) and its payload. Returns, per item, 1 when stored now or
-- 0 when stored earlier.
--
-- Per item: `SET marker NX EX` claims the id; only a successful claim appends the entry. The
-- first write of the script is a `SET`, so a Redis out of memory refuses the whole batch before
-- anything is written. Should an `XADD` fail after its claim (a key of the wrong type, say), the
-- claim is released before the error is raised, so a marker never stands for a missing entry;
-- items earlier in the batch stay stored and answer `duplicate` when the device retries.
--
-- An entry has two fields, `item` and `payload`, rather than one field per attribute: every
-- argument a script passes to `redis.call` is converted twice (Redis string to Lua and back),
-- and with nine fields that conversion cost more than the `XADD` itself (measured, see
-- docs/benchmarks.md).

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
