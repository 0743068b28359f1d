"""libtorrent seed for bench/download.sh (run with /usr/bin/python3).

  lt_seed.py TORRENT SAVE_DIR PROFILE

Seeds TORRENT from SAVE_DIR (seed_mode: no re-check up front; libtorrent
hashes each piece the first time it serves it, so warm it with one
untimed download). Listens on 127.0.0.1 (any free port) and announces to
the torrent's tracker. PROFILE: "default" (libtorrent's stock settings)
or "high_performance" (lt.high_performance_seed()). Prints
"seeding PORT" once the tracker has answered its first announce, then
runs until SIGTERM/SIGINT or until its parent (the benchmark) is gone.
"""

import os
import signal
import sys
import threading
import time

import libtorrent as lt

torrent, save_path, profile = sys.argv[1:4]

settings = lt.high_performance_seed() if profile == "high_performance" else {}
settings.update({
    "listen_interfaces": "127.0.0.1:0",
    "enable_dht": False,
    "enable_lsd": False,
    "enable_upnp": False,
    "enable_natpmp": False,
    "enable_outgoing_utp": False,
    "enable_incoming_utp": False,
    # Every peer on loopback has the same IP.
    "allow_multiple_connections_per_ip": True,
    "alert_mask": lt.alert.category_t.tracker_notification | lt.alert.category_t.error_notification,
})
ses = lt.session(settings)
p = lt.add_torrent_params()
p.ti = lt.torrent_info(torrent)
p.save_path = save_path
p.flags = lt.torrent_flags.seed_mode
h = ses.add_torrent(p)

deadline = time.time() + 20
announced = False
while time.time() < deadline and not announced:
    ses.wait_for_alert(200)
    for a in ses.pop_alerts():
        if isinstance(a, lt.tracker_reply_alert):
            announced = True
        elif isinstance(a, (lt.tracker_error_alert, lt.listen_failed_alert)):
            print("error", a.message(), file=sys.stderr, flush=True)
if not announced:
    sys.exit("libtorrent seed: no tracker reply within 20 s")

print("seeding", ses.listen_port(), flush=True)

parent = os.getppid()
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
signal.signal(signal.SIGINT, lambda *_: stop.set())
while not stop.wait(0.5) and os.getppid() == parent:
    ses.pop_alerts()
s = h.status()
print("uploaded", s.all_time_upload, flush=True)
