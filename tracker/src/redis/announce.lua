-- One announce, in one round trip (EVALSHA). Peers live in sorted sets
-- scored by the second they expire, seeders apart from leechers and each
-- address family apart, so counts are ZCARDs and samples never skip.
--
-- KEYS: 1 seeders and 2 leechers of the announcer's family, 3 seeders and
--       4 leechers of the other family, 5 the swarm's completed count.
--       All share the info hash as their hash tag ({...}), so this works
--       on Redis Cluster.
-- ARGV: 1 the announcer (a compact entry: 4- or 16-byte address + port),
--       2 '1' if it is a seeder, 3 event (0 none, 1 completed, 2 started,
--       3 stopped), 4 numwant, 5 peer timeout (s), 6 a random integer
--       from the caller (for the seeder/leecher split of a sample),
--       7 most peers in one swarm.
-- Returns {complete, incomplete, 0, peer, peer, ...}, or {-1}
-- when the swarm is full and the announcer is new.
--
-- The clock is Redis's own (TIME), so tracker instances on hosts whose
-- clocks disagree still agree on who has expired.
local now = tonumber(redis.call('TIME')[1])
local me = ARGV[1]
local seeder = ARGV[2] == '1'
local event = tonumber(ARGV[3])
local numwant = tonumber(ARGV[4])
local timeout = tonumber(ARGV[5])
local rnd = tonumber(ARGV[6])
local cap = tonumber(ARGV[7])
local mine, other = seeder and KEYS[1] or KEYS[2], seeder and KEYS[2] or KEYS[1]

-- Was the announcer a seeder (true), a leecher (false) or new (nil)?
local was = nil
if redis.call('ZSCORE', KEYS[1], me) then
  was = true
elseif redis.call('ZSCORE', KEYS[2], me) then
  was = false
end

-- A new peer's ZADD is the script's first write: Redis refuses it (OOM)
-- when it is at its maxmemory, and then the whole script, so that a
-- flood of new peers cannot grow Redis past it. (Writes after a script's
-- first are let through, and the cleanup below is not refused itself.)
-- Known peers still refresh and leave when Redis is full.
local new = was == nil and event ~= 3
if new then
  redis.call('ZADD', mine, now + timeout, me)
end

-- Expired peers go, in every list the counts come from.
for i = 1, 4 do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', '(' .. now)
end

local completed
if event == 3 then
  if was ~= nil then
    redis.call('ZREM', was and KEYS[1] or KEYS[2], me)
  end
  -- Some clients go straight to stopped without completed.
  completed = seeder and was == false
else
  if not new then
    redis.call('ZADD', mine, now + timeout, me)
    if was ~= seeder then
      redis.call('ZREM', other, me)
    end
  end
  redis.call('EXPIRE', mine, timeout + 60)
  if event == 1 then
    completed = was ~= true
  else
    completed = seeder and was == false
  end
end

local n = {}
for i = 1, 4 do
  n[i] = redis.call('ZCARD', KEYS[i])
end
if new and n[1] + n[2] + n[3] + n[4] > cap then
  redis.call('ZREM', mine, me)
  return {-1}
end
if completed then
  redis.call('INCR', KEYS[5])
end
-- The completed count lives as long as the swarm.
redis.call('EXPIRE', KEYS[5], timeout + 60)

-- (The completed count is for scrapes; an announce reply has no use for it.)
local reply = {n[1] + n[3], n[2] + n[4], 0}
if event == 3 or numwant <= 0 then
  return reply
end
local s, l = n[1], n[2]

-- A small random generator (Park-Miller), seeded by the caller: exact in
-- Lua's doubles, and no reliance on Redis's own math.random.
local state = rnd % 2147483646 + 1
local function random(n)
  state = state * 16807 % 2147483647
  return state % n
end

-- Appends the members at ranks [from, to] of `key` (ZRANGE by rank) to
-- `into`.
local function range(key, from, to, into)
  for _, p in ipairs(redis.call('ZRANGE', key, from, to)) do
    into[#into + 1] = p
  end
end

-- Up to `want` peers of `key` (of size `size`) other than the announcer,
-- appended to reply. As the in-memory store does, a sample is a few runs
-- of neighbouring members taken by rank at random places, one run in each
-- of as many equal segments, so none overlap: ZRANGE costs O(log n + run)
-- where ZRANDMEMBER with a count near a third of the set or more copies
-- the whole set. When the sample is half the set or more, the whole set
-- is read and shuffled instead.
local RUN = 16
local function take(key, want, size, holds_me)
  if want <= 0 or size <= 0 then
    return
  end
  local m = math.min(size, want + (holds_me and 1 or 0))
  local got = {}
  if 2 * m >= size then
    range(key, 0, -1, got)
    -- A partial Fisher-Yates shuffle: the first m are a random sample.
    for i = 1, math.min(m, #got - 1) do
      local j = i + random(#got - i + 1)
      got[i], got[j] = got[j], got[i]
    end
  else
    local k = math.ceil(m / RUN)
    local seg = math.floor(size / k)
    for r = 0, k - 1 do
      local first = r * seg
      local len = math.floor(m / k) + ((r < m % k) and 1 or 0)
      local this_seg = (r == k - 1) and (size - first) or seg
      len = math.min(len, this_seg)
      local at = random(this_seg)
      local tail = math.min(len, this_seg - at)
      range(key, first + at, first + at + tail - 1, got)
      if tail < len then
        range(key, first, first + len - tail - 1, got)
      end
    end
  end
  for _, p in ipairs(got) do
    if want == 0 then
      return
    end
    if p ~= me then
      reply[#reply + 1] = p
      want = want - 1
    end
  end
end

-- Others in each list (the announcer is now in its own).
local so = s - (seeder and 1 or 0)
local lo = l - (seeder and 0 or 1)
-- A seed needs only leechers, except on its started announce: aria2
-- announces a magnet whose metadata it lacks with left=0, and would
-- otherwise never hear of a seed.
if seeder and event ~= 2 then
  take(KEYS[2], math.min(numwant, lo), l, false)
elseif so + lo <= numwant then
  take(KEYS[1], so, s, seeder)
  take(KEYS[2], lo, l, not seeder)
else
  -- Seeders in proportion to their share, rounded at random.
  local total = so + lo
  local ts = math.floor((numwant * so + random(total)) / total)
  ts = math.max(numwant - lo, math.min(ts, so))
  take(KEYS[1], ts, s, seeder)
  take(KEYS[2], numwant - ts, l, not seeder)
end
return reply
