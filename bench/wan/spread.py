#!/usr/bin/env python3
"""How pieces spread in one kept WAN run (bench/wan.sh with KEEP=1).

Reads the shoal peers' debug logs of a run directory (`run-shoal` or
`run-shoal-initial` under the kept directory) and prints, from the peers'
own clocks (one machine, one clock):

1. the backlog each second: distinct pieces some leecher has, the pieces a
   leecher has on average, and the copies still missing of the distinct
   ones, also as seconds of all leechers' links (at --up-mbit each) — what
   is left to pass around once the seed's last new piece has arrived;
2. each hop, in 3 s buckets by when it happened: a `have` from the time its
   sender verified the piece; from the first `have` of a piece at a leecher
   to its first request for it (waiting for a peer that unchokes it to
   have the piece, or for room in its pipeline); from that request to the
   piece verified there;
3. the seed's first copies each second: how many it served, and the time
   from serving one (the first request it accepted) to its verification at
   that peer.

Needs PEER_LOG with shoal::pieces=debug and shoal::blocks=debug (2.), and
shoal::spread=debug (3.), e.g.
  PEER_LOG="warn,shoal=info,client=info,shoal::pieces=debug,shoal::blocks=debug,shoal::spread=debug"
Usage: bench/wan/spread.py RUN_DIR [--up-mbit 20] [--piece-kb 256]
"""
import argparse
import collections
import datetime
import glob
import os
import re
import statistics

LINE = re.compile(r"(\d\S+Z)\s+\w+\s+(\S+): (.*)")
BLOCKS = re.compile(r"(req|got|rej|have) peer=([\d.]+):\d+ piece=(\d+)")
SERVE = re.compile(r"serve peer=([\d.]+):\d+ piece=(\d+) copies=(\d+)")


def stamp(s):
    return datetime.datetime.fromisoformat(s.rstrip("Z")).timestamp()


def quantiles(xs):
    if not xs:
        return "      -       "
    xs = sorted(xs)
    return f"{statistics.median(xs):5.2f} / {xs[int(0.9 * len(xs))]:5.2f} ({len(xs)})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--up-mbit", type=float, default=20)
    ap.add_argument("--piece-kb", type=float, default=256)
    a = ap.parse_args()

    t0 = None
    name_of = {}  # ip -> leecher name
    verified = {}  # (leecher, piece) -> t
    haves = collections.defaultdict(dict)  # (leecher, piece) -> {sender: t}
    first_req = {}  # (leecher, piece) -> (t, peer ip)
    files = sorted(glob.glob(os.path.join(a.run_dir, "l*.err")))
    if not files:
        raise SystemExit(f"no leecher logs (l*.err) in {a.run_dir}")
    lines = {}
    for f in files:
        me = os.path.basename(f)[:-4]
        lines[me] = open(f, errors="replace").read().splitlines()
        for line in lines[me]:
            m = re.search(r"downloading .* listening on ([\d.]+):", line)
            if m:
                name_of[m.group(1)] = me
                t = stamp(line.split()[0])
                t0 = t if t0 is None else min(t0, t)
    if t0 is None:
        raise SystemExit("no 'downloading ... listening on' line: run with shoal=info")
    for me, ls in lines.items():
        for line in ls:
            m = LINE.match(line)
            if not m:
                continue
            t = stamp(m.group(1)) - t0
            target, rest = m.group(2), m.group(3)
            if target == "shoal::pieces":
                p = re.search(r"piece=(\d+)", rest)
                if p:
                    verified.setdefault((me, int(p.group(1))), t)
            elif target == "shoal::blocks":
                b = BLOCKS.match(rest)
                if not b:
                    continue
                kind, ip, piece = b.group(1), b.group(2), int(b.group(3))
                who = name_of.get(ip, "seed")
                if kind == "have":
                    haves[(me, piece)].setdefault(who, t)
                elif kind == "req":
                    first_req.setdefault((me, piece), (t, who))
    leechers = sorted(lines, key=lambda n: int(n[1:]) if n[1:].isdigit() else 0)
    n = len(leechers)

    # 1. Backlog.
    events = sorted((t, me, p) for (me, p), t in verified.items())
    first_at, count, i = {}, collections.Counter(), 0
    piece_mb = a.piece_kb * 1024 / 1e6
    link_mbps = a.up_mbit / 8
    print("1. backlog (copies of pieces some leecher has that others still lack)")
    print("   t s  distinct  mean have  min have  backlog  = s of all leechers' links")
    end = events[-1][0] if events else 0
    step = 0
    while step * 0.5 <= end + 0.5:
        s = step * 0.5
        step += 1
        while i < len(events) and events[i][0] <= s:
            t, me, p = events[i]
            first_at.setdefault(p, t)
            count[me] += 1
            i += 1
        if step % 2 == 0 or i == len(events):
            have = [count[m] for m in leechers]
            backlog = n * len(first_at) - sum(have)
            secs = backlog * piece_mb / (n * link_mbps)
            print(f"  {s:5.1f}  {len(first_at):8d}  {sum(have) / n:9.1f}  {min(have):8d}"
                  f"  {backlog:7d}  {secs:5.2f}")
        if i == len(events):
            break

    # 2. Hops.
    lat, react, xfer = (collections.defaultdict(list) for _ in range(3))
    for (me, p), senders in haves.items():
        for who, t in senders.items():
            if (who, p) in verified:
                lat[int(verified[(who, p)]) // 3].append(t - verified[(who, p)])
        req = first_req.get((me, p))
        if req and senders:
            th = min(senders.values())
            if req[0] >= th:
                react[int(th) // 3].append(req[0] - th)
    for (me, p), (t, who) in first_req.items():
        if (me, p) in verified and who != "seed":
            xfer[int(t) // 3].append(verified[(me, p)] - t)
    print("\n2. hops between leechers, median / p90 (count) in seconds")
    print("   bucket    have latency          first have -> request   request -> verified")
    for b in sorted(set(lat) | set(react) | set(xfer)):
        print(f"   {3 * b:2d}-{3 * b + 3:2d} s   {quantiles(lat[b]):20s}  "
              f"{quantiles(react[b]):22s}  {quantiles(xfer[b])}")

    # 3. The seed's first copies.
    seed_log = os.path.join(a.run_dir, "seed.err")
    if not os.path.exists(seed_log):
        return
    per = collections.defaultdict(lambda: [0, 0, []])
    for line in open(seed_log, errors="replace"):
        m = LINE.match(line)
        if not m or m.group(2) != "shoal::spread":
            continue
        s = SERVE.match(m.group(3))
        if not s:
            continue
        t = stamp(m.group(1)) - t0
        me, p, copies = name_of.get(s.group(1), s.group(1)), int(s.group(2)), int(s.group(3))
        row = per[int(t)]
        if copies == 0:
            row[0] += 1
            if (me, p) in verified:
                row[2].append(verified[(me, p)] - t)
        else:
            row[1] += 1
    if per:
        print("\n3. the seed: pieces served per second (first copies, more copies), and")
        print("   first copy served -> verified at that peer, median / max")
        for s in sorted(per):
            first, more, delay = per[s]
            d = (f"{statistics.median(delay):5.2f} / {max(delay):5.2f}" if delay else "    -")
            print(f"   {s:3d} s  {first:3d} {more:3d}   {d}")


if __name__ == "__main__":
    main()
