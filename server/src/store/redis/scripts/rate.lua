-- GCRA for the tenant and the device at once, on Redis's clock so every server instance agrees.
-- KEYS: tenant state, device state. ARGV: tenant rate/s, device rate/s (0 = unlimited). Returns
-- the waits in microseconds; both zero means allowed, and only then does the state move.
--
-- Per subject the state is its theoretical arrival time (TAT, in µs; one in the past counts as
-- now) and the interval is 1 s / rate in whole µs. A request is allowed when
-- TAT + interval - rate * interval <= now: a burst of one second's worth (rate requests) from
-- idle, then one request per interval. The embedded store runs the same arithmetic in Rust
-- (`gcra` in server/src/store/rate.rs). A state expires a second after its TAT has passed: from
-- then on it would count as now anyway, so an idle subject costs no memory.

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
