-- wrk script: fill a tracker with SWARMS x PER peers, deterministically.
--
--   wrk ... -s fill.lua URL -- HASHFILE PER [close]
--
-- Request k (counting from 0, wrapping around) announces peer k % PER of
-- swarm k / PER: info hash = line k / PER + 1 of HASHFILE, port 10000 + k % PER
-- (distinct within the swarm; every peer is 127.0.0.1), peer id
-- "-FILL-" + k, event=started, left=0 (seeder) for 3 of every 10 peers.
-- After the last peer it starts over, which only refreshes peers, so the
-- caller stops wrk once the tracker reports SWARMS x PER peers.
-- Use one wrk thread: the counter is per thread.

local hashes, per, headers = {}, 10, {}
local k, total = 0, 0

local function enc_hex(h)
  return (h:gsub("%x%x", function(x) return "%" .. x:upper() end))
end

function init(args)
  for line in io.lines(args[1]) do
    line = line:gsub("%s+", "")
    if #line == 40 then hashes[#hashes + 1] = enc_hex(line) end
  end
  per = tonumber(args[2] or "10")
  if args[3] == "close" then headers["Connection"] = "close" end
  total = #hashes * per
end

function request()
  local swarm = math.floor(k / per)
  local j = k % per
  local left = (j < 3) and 0 or 1000000
  local path = "/announce?info_hash=" .. hashes[swarm + 1]
    .. "&peer_id=" .. string.format("-FILL-%014d", k)
    .. "&port=" .. (10000 + j)
    .. "&uploaded=0&downloaded=0&left=" .. left
    .. "&event=started&compact=1&numwant=50"
  k = (k + 1) % total
  return wrk.format("GET", path, headers)
end
