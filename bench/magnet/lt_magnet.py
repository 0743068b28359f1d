"""libtorrent magnet fetch for bench/magnet.sh (run with /usr/bin/python3).

  lt_magnet.py MAGNET SAVE_DIR TIMEOUT

Adds MAGNET (its trackers name the seeds) with libtorrent's stock
settings, stops the torrent once the metadata is there (no data is
fetched), prints "metadata SECONDS" (from add_torrent to
metadata_received_alert) and exits 0; exits 1 on timeout.
"""

import sys
import time

import libtorrent as lt

magnet, save_path, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
ses = lt.session({
    "listen_interfaces": "127.0.0.1:0",
    "enable_dht": False,
    "enable_lsd": False,
    "enable_upnp": False,
    "enable_natpmp": False,
    "enable_outgoing_utp": False,
    "enable_incoming_utp": False,
    "allow_multiple_connections_per_ip": True,
    "alert_mask": lt.alert.category_t.status_notification | lt.alert.category_t.error_notification,
})
p = lt.parse_magnet_uri(magnet)
p.save_path = save_path
start = time.time()
h = ses.add_torrent(p)
deadline = start + timeout
while time.time() < deadline:
    ses.wait_for_alert(100)
    for a in ses.pop_alerts():
        if isinstance(a, lt.metadata_received_alert):
            print("metadata %.3f" % (time.time() - start), flush=True)
            sys.exit(0)
sys.exit("libtorrent: no metadata within %.0f s" % timeout)
