#!/usr/bin/env python3
"""Small helpers for bench/tracker.sh (standard library only).

  helper.py port                         a free 127.0.0.1 port (TCP and UDP)
  helper.py hashes N FILE PREFIX         N hex info hashes: sha1(PREFIX + i)
  helper.py verify URL HASHFILE [N]      N sample announces must succeed
  helper.py wait-peers KIND URL TARGET TIMEOUT
                                         poll until the tracker holds TARGET
                                         peers (KIND: shoal | opentracker)
  helper.py shoal-stats URL              one line of /stats.json figures
"""

import hashlib
import json
import os
import random
import socket
import sys
import time
import urllib.request


def free_port():
    # Bind TCP and UDP to the same port (opentracker takes both).
    for _ in range(100):
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.bind(("127.0.0.1", 0))
        port = t.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
        except OSError:
            t.close()
            continue
        t.close()
        u.close()
        return port
    sys.exit("no free port")


def hashes(n, path, prefix):
    with open(path, "w") as f:
        for i in range(n):
            f.write(hashlib.sha1(f"{prefix}{i}".encode()).hexdigest() + "\n")


def bdecode(b, i=0):
    c = b[i : i + 1]
    if c == b"i":
        j = b.index(b"e", i)
        return int(b[i + 1 : j]), j + 1
    if c == b"l":
        i, out = i + 1, []
        while b[i : i + 1] != b"e":
            v, i = bdecode(b, i)
            out.append(v)
        return out, i + 1
    if c == b"d":
        i, out = i + 1, {}
        while b[i : i + 1] != b"e":
            k, i = bdecode(b, i)
            v, i = bdecode(b, i)
            out[k] = v
        return out, i + 1
    if c.isdigit():
        j = b.index(b":", i)
        n = int(b[i:j])
        return b[j + 1 : j + 1 + n], j + 1 + n
    raise ValueError(f"bad bencode at {i}")


def pct(raw):
    return "".join(f"%{x:02X}" for x in raw)


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def announce(base, info_hash, port, left, event=None):
    q = (
        f"info_hash={pct(info_hash)}&peer_id={pct(os.urandom(20))}&port={port}"
        f"&uploaded=0&downloaded=0&left={left}&compact=1&numwant=50"
    )
    if event:
        q += f"&event={event}"
    status, body = get(f"{base}?{q}")
    if status != 200:
        raise SystemExit(f"{base}: HTTP {status}: {body[:200]!r}")
    try:
        d, end = bdecode(body)
    except (ValueError, IndexError) as e:
        raise SystemExit(f"{base}: reply is not bencoded ({e}): {body[:200]!r}")
    if not isinstance(d, dict) or end != len(body):
        raise SystemExit(f"{base}: reply is not one bencoded dict: {body[:200]!r}")
    if b"failure reason" in d:
        raise SystemExit(f"{base}: failure reason: {d[b'failure reason'].decode(errors='replace')}")
    peers = d.get(b"peers")
    if not isinstance(peers, bytes) or len(peers) % 6:
        raise SystemExit(f"{base}: no compact 'peers' in reply: {body[:200]!r}")
    return {(peers[k : k + 4], int.from_bytes(peers[k + 4 : k + 6], "big")) for k in range(0, len(peers), 6)}


def verify(base, hashfile, n):
    hs = [bytes.fromhex(l.strip()) for l in open(hashfile) if l.strip()]
    rng = random.Random()
    # A tracker may still be loading its whitelist: retry the first one.
    deadline = time.time() + 15
    while True:
        try:
            announce(base, hs[0], 1024, 0, "stopped")
            break
        except (SystemExit, OSError) as e:
            if time.time() > deadline:
                raise SystemExit(f"{base}: not ready after 15 s: {e}")
            time.sleep(0.2)
    for _ in range(n):
        h = rng.choice(hs)
        p1, p2 = rng.randrange(1024, 65536), rng.randrange(1024, 65536)
        while p2 == p1:
            p2 = rng.randrange(1024, 65536)
        announce(base, h, p1, rng.randrange(1, 10**9), "started")
        peers = announce(base, h, p2, 0, "started")
        # The second peer must be told about the first one.
        if (bytes([127, 0, 0, 1]), p1) not in peers:
            raise SystemExit(f"{base}: peer 127.0.0.1:{p1} missing from the next reply of swarm {h.hex()}")
        announce(base, h, p1, 0, "stopped")
        announce(base, h, p2, 0, "stopped")
    print(f"ok: {n} swarms: replies are bencoded dicts with compact peers, no failure reason")


def peers_now(kind, url):
    if kind == "shoal":
        s = json.loads(get(url)[1])
        return s["seeders"] + s["leechers"]
    # opentracker /stats?mode=peer: "<peers>\n<seeds>\n..." (needs -A 127.0.0.1)
    return int(get(url)[1].split()[0])


def wait_peers(kind, url, target, timeout, poll=1.0):
    t0 = time.time()
    n = 0
    while time.time() - t0 < timeout:
        try:
            n = peers_now(kind, url)
        except OSError:
            pass
        if n >= target:
            print(f"{n} peers after {time.time() - t0:.1f} s")
            return
        time.sleep(poll)
    raise SystemExit(f"timeout: {n} of {target} peers after {timeout} s")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "port":
        print(free_port())
    elif cmd == "hashes":
        hashes(int(args[0]), args[1], args[2])
    elif cmd == "verify":
        verify(args[0], args[1], int(args[2]) if len(args) > 2 else 20)
    elif cmd == "wait-peers":
        wait_peers(args[0], args[1], int(args[2]), float(args[3]))
    elif cmd == "shoal-stats":
        s = json.loads(get(args[0])[1])
        print(s["swarms"], s["seeders"] + s["leechers"], s["peer_heap_bytes"], s["failures_total"], s["announces_total"])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
