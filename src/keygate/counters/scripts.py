"""The Lua scripts behind :class:`~keygate.counters.redis.RedisCounters`, one per decision.

Each runs atomically on the Redis server and reads the time from ``redis.call('TIME')``, so the
gateway instances' own clocks never enter a decision. Every key a script touches is passed in
``KEYS`` (a standalone Redis, or one primary; Redis Cluster is not supported: a request's key,
team and global counters would live in different slots).

Key layout under the prefix ``P`` (``keygate:`` by default):

* ``P r:<rate>``: a rate's GCRA theoretical arrival time (seconds, Redis clock), expiring once the
  bucket is full again;
* ``P c:<gate>``: a concurrency gate, a sorted set of lease ids scored by lease expiry (ms);
* ``P b:<budget>``: a budget counter, a hash of ``s`` (spent) and ``h`` (held);
* ``P bh:<budget>``: its holds, a sorted set of ``<lease>|<amount>`` scored by lease expiry (ms);
  an expired hold is charged at its amount (the request it covered was sent and may have been
  billed), as a crash of a single gateway counts its holds as spent;
* ``P loaded``: set once budget counters were rebuilt from the store; scripts that decide on a
  budget answer ``noload`` without it (Redis restarted empty);
* ``P lf:<ip>``: an address's failed authentications (sorted set scored by time, ms);
* ``P lk``: locked-out addresses (sorted set scored by the end of the lockout, ms); each new
  lockout is also published on the channel ``P locks``.

Numbers cross the boundary as strings (a Lua number returned to Redis is truncated to an
integer); they are written with 17 significant digits, so a float survives the round trip.
"""

from __future__ import annotations

# Shared by the scripts that use them (prepended to each script's body).
_COMMON = r"""
-- Seconds since 2023-11-14 (an epoch nearer now keeps more of a double's precision for the
-- fractions; the rate tolerance below is 1 us, as a double at this magnitude resolves ~10 ns).
local EPOCH = 1700000000
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) - EPOCH + tonumber(t[2]) / 1000000
end
local function num(x) return string.format('%.17g', x) end
-- Drop expired holds of one budget, charging each at its amount; returns spent, held.
local function holds(bkey, hkey, now_ms)
  local b = redis.call('HMGET', bkey, 's', 'h')
  local s, h = tonumber(b[1]) or 0, tonumber(b[2]) or 0
  local gone = redis.call('ZRANGEBYSCORE', hkey, '-inf', now_ms)
  if #gone > 0 then
    for _, m in ipairs(gone) do
      local amount = tonumber(string.match(m, '|(.*)$')) or 0
      s = s + amount
      h = h - amount
    end
    if h < 1e-9 then h = 0 end
    redis.call('ZREMRANGEBYSCORE', hkey, '-inf', now_ms)
    redis.call('HSET', bkey, 's', num(s), 'h', num(h))
  end
  return s, h
end
"""

ADMIT = (
    _COMMON
    + r"""
-- KEYS: rates (nr), gates (ng), then per budget its hash and holds (2 * nb), then the marker.
-- ARGV, first what is the same on every request of a key (commands.py packs it once):
--   nr, ng, nb, lease_ms, per rate: limit, period; per gate: cap; per budget: limit;
-- then what changes: lease, output, need, step, per rate: cost; per budget: base, unit.
local nr, ng, nb = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local lease_ms = tonumber(ARGV[4])
local v = 5 + 2 * nr + ng + nb
local lease = ARGV[v]
local output, need, step = tonumber(ARGV[v + 1]), tonumber(ARGV[v + 2]), tonumber(ARGV[v + 3])
local now = clock()
local now_ms = math.floor((now + EPOCH) * 1000)
if nb > 0 and redis.call('EXISTS', KEYS[nr + ng + 2 * nb + 1]) == 0 then
  return {'noload'}
end
-- Gates first: a full gate refuses before any rate is looked at.
for i = 1, ng do
  local key = KEYS[nr + i]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms)
  if redis.call('ZCARD', key) >= tonumber(ARGV[4 + 2 * nr + i]) then
    return {'gate', tostring(i)}
  end
end
-- Every rate checked before any is written: a refusal changes nothing.
local afters = {}
for i = 1, nr do
  local limit, period = tonumber(ARGV[3 + 2 * i]), tonumber(ARGV[4 + 2 * i])
  local cost = tonumber(ARGV[v + 3 + i])
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  local after = tat + cost * period / limit
  if after - now > period + 1e-6 then
    local wait = after - now - period
    if cost > limit then wait = period end
    local out = {'rate', tostring(i), num(wait)}
    for j = 1, nr do
      local lj, pj = tonumber(ARGV[3 + 2 * j]), tonumber(ARGV[4 + 2 * j])
      local old = tonumber(redis.call('GET', KEYS[j])) or now
      if old < now then old = now end
      local used = (old - now) / (pj / lj)
      local left = lj - math.ceil(used - 1e-9)
      if left < 0 then left = 0 end
      out[#out + 1] = tostring(left)
      out[#out + 1] = num(old - now)
    end
    return out
  end
  afters[i] = after
end
-- Budgets: the most output every budget affords, up to the output asked for.
local states = {}
local afford = output
for i = 1, nb do
  local limit = tonumber(ARGV[4 + 2 * nr + ng + i])
  local base, unit = tonumber(ARGV[v + 2 + nr + 2 * i]), tonumber(ARGV[v + 3 + nr + 2 * i])
  local s, h = holds(KEYS[nr + ng + 2 * i - 1], KEYS[nr + ng + 2 * i], now_ms)
  local room_total = limit - s - h - base
  local room
  if unit > 0 then room = room_total / unit + 1e-12 / unit
  elseif room_total >= -1e-12 then room = output
  else room = -1 end
  if room < need then return {'budget', tostring(i)} end
  if room < afford then afford = math.floor(room) end
  states[i] = {s, h, base, unit}
end
if afford < output and step > 1 then afford = afford - afford % step end
-- Everything fits: write it all.
local expiry = now_ms + lease_ms
local result = {'ok', num(now), tostring(afford)}
for i = 1, nr do
  local ahead = afters[i] - now
  redis.call('SET', KEYS[i], num(afters[i]), 'PX', math.ceil(ahead * 1000) + 1000)
  result[#result + 1] = num(ahead)
end
for i = 1, ng do
  local key = KEYS[nr + i]
  redis.call('ZADD', key, expiry, lease)
  redis.call('PEXPIRE', key, lease_ms * 2)
end
for i = 1, nb do
  local st = states[i]
  local amount = st[3] + st[4] * afford
  local member = lease .. '|' .. num(amount)
  redis.call('HSET', KEYS[nr + ng + 2 * i - 1], 's', num(st[1]), 'h', num(st[2] + amount))
  redis.call('ZADD', KEYS[nr + ng + 2 * i], expiry, member)
  result[#result + 1] = member
end
return result
"""
)

RELEASE = (
    _COMMON
    + r"""
-- KEYS: gates (ng), token rates (nr), per budget its hash and holds (2 * nb).
-- ARGV: ng, nr, nb, per rate: limit, period (the same on every request of a key); then lease,
-- delta, per budget: hold member ('' for none), spent.
local ng, nr, nb = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local v = 4 + 2 * nr
local lease, delta = ARGV[v], tonumber(ARGV[v + 1])
local now = clock()
local now_ms = math.floor((now + EPOCH) * 1000)
for i = 1, ng do redis.call('ZREM', KEYS[i], lease) end
if delta ~= 0 then
  for i = 1, nr do
    local key = KEYS[ng + i]
    local limit, period = tonumber(ARGV[2 + 2 * i]), tonumber(ARGV[3 + 2 * i])
    local tat = tonumber(redis.call('GET', key)) or now
    if tat < now then tat = now end
    tat = tat + delta * period / limit
    if tat <= now then redis.call('DEL', key)
    else redis.call('SET', key, num(tat), 'PX', math.ceil((tat - now) * 1000) + 1000) end
  end
end
local a = v + 2
local out = {}
for i = 1, nb do
  local bkey, hkey = KEYS[ng + nr + 2 * i - 1], KEYS[ng + nr + 2 * i]
  local member, spent = ARGV[a], tonumber(ARGV[a + 1])
  a = a + 2
  local s, h = holds(bkey, hkey, now_ms)
  if member ~= '' and redis.call('ZREM', hkey, member) == 1 then
    h = h - (tonumber(string.match(member, '|(.*)$')) or 0)
    if h < 1e-9 then h = 0 end
  end
  redis.call('HSET', bkey, 's', num(s + spent), 'h', num(h))
  out[#out + 1] = num(s)
  out[#out + 1] = num(s + spent)
end
return out
"""
)

RENEW = r"""
-- KEYS: sorted sets of leases; ARGV: lease_ms, then per key its member and whether it is a gate
-- ('1': the set expires with its last lease; budget holds never expire unseen, they are charged).
local t = redis.call('TIME')
local lease_ms = tonumber(ARGV[1])
local expiry = math.floor((tonumber(t[1]) + tonumber(t[2]) / 1000000) * 1000) + lease_ms
local n = 0
for i = 1, #KEYS do
  local changed = redis.call('ZADD', KEYS[i], 'XX', 'CH', expiry, ARGV[2 * i])
  n = n + changed
  if changed == 1 and ARGV[2 * i + 1] == '1' then redis.call('PEXPIRE', KEYS[i], lease_ms * 2) end
end
return n
"""

STATE = (
    _COMMON
    + r"""
-- KEYS: the marker, then per budget its hash and holds. Returns spent, held per budget, or
-- 'noload' when the budgets are not loaded (what is here is not the whole truth: never persist it).
if ARGV[1] == '1' and redis.call('EXISTS', KEYS[1]) == 0 then return {'noload'} end
local now_ms = math.floor((clock() + EPOCH) * 1000)
local out = {'ok'}
for i = 2, #KEYS, 2 do
  local s, h = holds(KEYS[i], KEYS[i + 1], now_ms)
  out[#out + 1] = num(s)
  out[#out + 1] = num(h)
end
return out
"""
)

REBUILD = r"""
-- KEYS: the marker, then budget hashes; ARGV: their persisted spend. Once only: a second
-- instance finding the marker set changes nothing. Spend settled here since Redis came back is
-- kept and the persisted spend added to it.
if redis.call('SET', KEYS[1], '1', 'NX') == false then return 0 end
for i = 2, #KEYS do redis.call('HINCRBYFLOAT', KEYS[i], 's', ARGV[i - 1]) end
return 1
"""

FAIL = r"""
-- KEYS: the address's failures, the locks; ARGV: address, window_ms, max, duration_ms, member, channel.
local t = redis.call('TIME')
local now_ms = math.floor((tonumber(t[1]) + tonumber(t[2]) / 1000000) * 1000)
local window, most, duration = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local ends = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]))
if ends and ends > now_ms then return 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms - window)
redis.call('ZADD', KEYS[1], now_ms, ARGV[5])
redis.call('PEXPIRE', KEYS[1], window)
if redis.call('ZCARD', KEYS[1]) < most then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms)
redis.call('ZADD', KEYS[2], now_ms + duration, ARGV[1])
redis.call('PUBLISH', ARGV[6], ARGV[1] .. ' ' .. duration)
return duration
"""

LOCKS = r"""
-- KEYS: the locks. Returns the addresses locked now, each with the milliseconds it has left.
local t = redis.call('TIME')
local now_ms = math.floor((tonumber(t[1]) + tonumber(t[2]) / 1000000) * 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
local found = redis.call('ZRANGEBYSCORE', KEYS[1], now_ms, '+inf', 'WITHSCORES')
local out = {}
for i = 1, #found, 2 do
  out[#out + 1] = found[i]
  out[#out + 1] = tostring(tonumber(found[i + 1]) - now_ms)
end
return out
"""
