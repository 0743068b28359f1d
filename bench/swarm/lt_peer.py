"""One libtorrent peer for bench/swarm.sh (run with /usr/bin/python3).

  lt_peer.py seed  TORRENT SAVE_DIR [super]
  lt_peer.py leech TORRENT SAVE_DIR

One process, one session, one torrent; listens on 127.0.0.1 (any free
port), or on $LT_LISTEN (e.g. "10.99.0.11:0" on a host of bench/wan.sh),
and finds peers through the torrent's tracker. DHT, LSD, UPnP,
NAT-PMP and uTP are off; everything else is libtorrent's stock settings
(PEX on, 8 unchoke slots, ...), except allow_multiple_connections_per_ip,
which loopback needs (every peer has the same IP).

seed:  adds the torrent without seed_mode, so libtorrent checks the data up
       front (as `shoal seed` does) instead of hashing each piece the first
       time it serves it (which would put that work inside the timed part).
       "super" turns on super-seeding (torrent_flags.super_seeding) once the
       check is done. Prints "ready PORT" once it is a seed and the tracker
       has answered an announce made after the check.
leech: starts with an empty SAVE_DIR; prints "download complete" as soon as
       the torrent is finished (every piece downloaded and hash-checked),
       then keeps seeding to the rest of the swarm.

Both run until SIGINT/SIGTERM (or until the parent is gone), then print one
JSON line: {"uploaded": ..., "downloaded": ..., "size": ..., "super_seeding": ...}
(payload bytes: status().total_payload_upload / total_payload_download;
all_time_upload lags: libtorrent folds the last second in on its next tick).
"""

import json
import os
import signal
import sys
import threading
import time

import libtorrent as lt

role, torrent, save_path = sys.argv[1:4]
want_super = len(sys.argv) > 4 and sys.argv[4] == "super"

cat = lt.alert.category_t
ses = lt.session({
    "listen_interfaces": os.environ.get("LT_LISTEN", "127.0.0.1:0"),
    "enable_dht": False,
    "enable_lsd": False,
    "enable_upnp": False,
    "enable_natpmp": False,
    "enable_outgoing_utp": False,
    "enable_incoming_utp": False,
    "allow_multiple_connections_per_ip": True,
    "alert_mask": cat.status_notification | cat.error_notification | cat.tracker_notification,
})
ti = lt.torrent_info(torrent)
p = lt.add_torrent_params()
p.ti = ti
p.save_path = save_path
h = ses.add_torrent(p)

stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
signal.signal(signal.SIGINT, lambda *_: stop.set())
parent = os.getppid()


def alerts(timeout_ms):
    """The names of the alerts that came, printing the errors among them.

    Only plain strings leave this function (its locals die at its return):
    libtorrent frees the alerts of one pop_alerts() at the next, and a
    Python wrapper of a freed alert is a dangling pointer (a
    python3-libtorrent leecher once crashed in __dynamic_cast, where the
    bindings convert alerts).
    """
    ses.wait_for_alert(timeout_ms)
    names = []
    for a in ses.pop_alerts():
        if isinstance(a, (lt.tracker_error_alert, lt.listen_failed_alert, lt.file_error_alert,
                          lt.torrent_error_alert, lt.hash_failed_alert)):
            print("lt:", a.message(), file=sys.stderr, flush=True)
        names.append(type(a).__name__)
    return names


if role == "seed":
    deadline = time.time() + 60
    while not h.status().is_seeding:
        alerts(100)
        if time.time() > deadline or stop.is_set():
            sys.exit("libtorrent seed: data check did not finish (wrong SAVE_DIR?)")
    if want_super:
        h.set_flags(lt.torrent_flags.super_seeding)
    # An announce made now says left=0 (a seed). Any earlier one set the
    # tracker's min interval, which a plain force_reannounce would wait for.
    h.force_reannounce(0, -1, lt.reannounce_flags_t.ignore_min_interval)
    announced = False
    while not announced:
        if "tracker_reply_alert" in alerts(200):
            announced = True
        if time.time() > deadline or stop.is_set():
            sys.exit("libtorrent seed: no tracker reply")
    print("ready", ses.listen_port(), flush=True)
else:
    done = False
    while not stop.is_set() and os.getppid() == parent:
        if "torrent_finished_alert" in alerts(500):
            done = True
        if not done and h.status().is_seeding:
            done = True
        if done:
            print("download complete", flush=True)
            break

while not stop.is_set() and os.getppid() == parent:
    alerts(500)

s = h.status()
print(json.dumps({
    "uploaded": s.total_payload_upload,
    "downloaded": s.total_payload_download,
    "size": ti.total_size(),
    "complete": s.is_seeding,
    "super_seeding": bool(h.flags() & lt.torrent_flags.super_seeding),
}), flush=True)
