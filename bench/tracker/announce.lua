-- wrk script: random BitTorrent announces.
--
--   [POOL=N] wrk ... -s announce.lua URL -- HASHFILE [close|keepalive] [check]
--
-- HASHFILE: hex info hashes, one per line (the same file is opentracker's
-- whitelist). Each request picks one at random, a random 20-byte peer id,
-- a random port in 1024-65535, an event (80% none, 10% started, 5% stopped,
-- 5% completed) and `left` (0, i.e. a seeder, 30% of the time); compact=1,
-- numwant=50. Binary fields are percent-encoded byte by byte (%XX).
-- "close": every request carries `Connection: close`, like clients that
-- open a new connection for each announce.
-- "check": also inspect every reply (slower; used for the warm-up): count
-- replies that are not HTTP 200 with a bencoded dict holding "5:peers", or
-- that carry a "failure reason", and print the counts when wrk is done.
--
-- The announces are made in init(), before wrk's clock starts: POOL of
-- them (default 131072, ~45 MB), sent in turn, so that wrk's per-request
-- work is a table lookup. Building each one while timing (POOL=0) cost
-- wrk ~40% of its core with keep-alive, which made the load generator,
-- not the tracker, the bottleneck. Going round the pool, peers announce
-- again as real ones do (swarms of up to POOL / hashes peers).

local hashes = {}
local headers = {}

local hex = {}
for b = 0, 255 do hex[b] = string.format("%%%02X", b) end

local function enc_hex(h)
  local out = {}
  for i = 1, #h, 2 do out[#out + 1] = hex[tonumber(h:sub(i, i + 1), 16)] end
  return table.concat(out)
end

-- Runs in the main state: remember the threads so done() can read counters.
local threads = {}
function setup(thread)
  threads[#threads + 1] = thread
end

good, bad, first_bad = 0, 0, ""

local function check(status, _, body)
  if status == 200 and body:sub(1, 1) == "d" and body:find("5:peers", 1, true)
      and not body:find("failure reason", 1, true) then
    good = good + 1
  else
    bad = bad + 1
    if first_bad == "" then first_bad = status .. " " .. body:sub(1, 200) end
  end
end

function init(args)
  local file = args[1] or error("usage: -- HASHFILE [close|keepalive] [check]")
  for line in io.lines(file) do
    line = line:gsub("%s+", "")
    if #line == 40 then hashes[#hashes + 1] = enc_hex(line) end
  end
  if #hashes == 0 then error("no info hashes in " .. file) end
  if args[2] == "close" then headers["Connection"] = "close" end
  -- wrk asks for replies only if a global response() exists after init().
  if args[3] == "check" then response = check end
  -- Different per wrk thread and per run.
  local addr = tonumber(tostring({}):match("0x(%x+)") or "0", 16) or 0
  math.randomseed(os.time() * 1000 + addr % 1000)
end

function done()
  for _, t in ipairs(threads) do
    local g, b = t:get("good"), t:get("bad")
    if g and (g + b) > 0 then
      io.write(string.format("CHECK good=%d bad=%d\n", g, b))
      local f = t:get("first_bad")
      if f and f ~= "" then io.write("CHECK first bad reply: ", f, "\n") end
    end
  end
end

local random = math.random
local concat = table.concat
local pid = {}

local function make()
  for i = 1, 20 do pid[i] = hex[random(0, 255)] end
  local r = random(1, 100)
  local event = ""
  if r <= 10 then event = "&event=started"
  elseif r <= 15 then event = "&event=stopped"
  elseif r <= 20 then event = "&event=completed" end
  local left = 0
  if random(1, 100) > 30 then left = random(1, 2000000000) end
  local path = "/announce?info_hash=" .. hashes[random(1, #hashes)]
    .. "&peer_id=" .. concat(pid)
    .. "&port=" .. random(1024, 65535)
    .. "&uploaded=0&downloaded=0&left=" .. left
    .. event .. "&compact=1&numwant=50"
  return wrk.format("GET", path, headers)
end

local pool, at = {}, 0

function request()
  if #pool == 0 then return make() end
  at = at % #pool + 1
  return pool[at]
end

-- wrk calls init() before it starts timing.
local user_init = init
function init(args)
  user_init(args)
  local n = tonumber(os.getenv("POOL") or "131072") or 131072
  for i = 1, n do pool[i] = make() end
end
