"""libtorrent leecher for bench/download.sh (run with /usr/bin/python3).

  lt_leech.py TORRENT SAVE_DIR TIMEOUT

Adds TORRENT with an empty SAVE_DIR; it finds peers through the torrent's
tracker (DHT, LSD, PEX off; TCP only). Polls status().is_seeding every
10 ms and prints a JSON line {"seconds": ..., "bytes": ...}: seconds
from before the session was made to completion (every piece downloaded
and hash-checked). Exits 1 after TIMEOUT seconds.
"""

import json
import sys
import time

t0 = time.monotonic()
import libtorrent as lt  # noqa: E402 (counted in, as a client's start-up)

torrent, save_path, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
ses = lt.session({
    "listen_interfaces": "127.0.0.1:0",
    "enable_dht": False,
    "enable_lsd": False,
    "enable_upnp": False,
    "enable_natpmp": False,
    "enable_outgoing_utp": False,
    "enable_incoming_utp": False,
    "allow_multiple_connections_per_ip": True,
})
p = lt.add_torrent_params()
p.ti = lt.torrent_info(torrent)
p.save_path = save_path
h = ses.add_torrent(p)
while time.monotonic() - t0 < timeout:
    s = h.status()
    if s.is_seeding:
        print(json.dumps({"seconds": round(time.monotonic() - t0, 4),
                          "bytes": s.total_done}), flush=True)
        sys.exit(0)
    time.sleep(0.01)
s = h.status()
print("timeout", s.state, s.progress, s.num_peers, s.errc.message(), flush=True)
sys.exit(1)
