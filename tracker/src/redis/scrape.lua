-- One swarm's counts for a scrape, peers past their expiry not counted.
-- KEYS: 1 IPv4 seeders, 2 IPv4 leechers, 3 IPv6 seeders, 4 IPv6 leechers,
-- 5 the completed count (the announce script's keys).
-- Returns {complete, incomplete, downloaded}.
local live = redis.call('TIME')[1]
local function count(k)
  return redis.call('ZCOUNT', k, live, '+inf')
end
return {
  count(KEYS[1]) + count(KEYS[3]),
  count(KEYS[2]) + count(KEYS[4]),
  tonumber(redis.call('GET', KEYS[5]) or '0'),
}
