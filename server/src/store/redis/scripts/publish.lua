-- All-or-nothing publish. KEYS: the target stream per change, then the tenant's last-id key.
-- ARGV: MINID threshold, then seven fields per change (the last, ttl_secs, empty when absent).
-- Returns the entry ids.
--
-- Entry ids are chosen here, not by `*`: every down stream of a tenant takes its ids from one
-- per-tenant sequence (`last-id`), so ids are totally ordered across the tenant-wide stream and
-- all device streams, and a pull merges them in exactly the order they were published.

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
