"""Figures for bench/wan.sh, from bench/swarm/run.py's JSON result lines.

  summary.py limit --size BYTES --n N --up MBIT --seed-up MBIT --down MBIT
  summary.py line  --round R    --n N --up ... (one result on stdin)
  summary.py table --results RESULTS.jsonl --n N --up ...

The physical limit of a swarm of 1 seed and N leechers whose links carry UP
Mbit/s out (the seed's SEED_UP) and DOWN in: the seed must upload one copy,
N copies need N x size of upload from N + 1 hosts, and each leecher must
download one: max(size / SEED_UP, N x size / ((N + 1) x UP), size / DOWN).
table prints medians per mode, each time as a multiple of the limit, the
ratios to libtorrent and the goal lines of issue 18 (PASS/MISS). Exit status
1 when a run failed.
"""

import argparse
import json
import statistics
import sys

ORDER = ["shoal", "lt", "mixed", "shoal-initial", "lt-super", "mixed-initial"]
LABEL = {
    "shoal": "shoal",
    "lt": "libtorrent",
    "mixed": "mixed (shoal seed)",
    "shoal-initial": "shoal --initial-seeding",
    "lt-super": "libtorrent super-seeding",
    "mixed-initial": "mixed, --initial-seeding",
}
GOAL_LIMIT_X = 1.2
GOAL_LT_X = 0.8

ap = argparse.ArgumentParser()
ap.add_argument("what", choices=["limit", "line", "table"])
ap.add_argument("--size", type=int)
ap.add_argument("--round", type=int)
ap.add_argument("--results")
ap.add_argument("--n", type=int, required=True)
ap.add_argument("--up", type=float, required=True)
ap.add_argument("--seed-up", type=float, required=True)
ap.add_argument("--down", type=float, required=True)
args = ap.parse_args()


def limit(size):
    """Seconds, and which term binds."""
    bits = size * 8
    terms = {
        "the seed's upload of one copy": bits / (args.seed_up * 1e6),
        f"{args.n} copies from {args.n + 1} uplinks": args.n * bits / ((args.n + 1) * args.up * 1e6),
        "a leecher's download of one copy": bits / (args.down * 1e6),
    }
    which = max(terms, key=terms.get)
    return terms[which], which, terms


def fmt(v, f):
    """v in format f, or "-" as wide as f says."""
    width = "".join(c for c in f.split(".")[0] if c.isdigit())
    return ("-" if v is None else format(v, f)).rjust(int(width or 0))


if args.what == "limit":
    secs, which, terms = limit(args.size)
    print(f"== physical limit {secs:.2f} s ({which}); "
          + ", ".join(f"{k}: {v:.2f} s" for k, v in terms.items()))
    sys.exit(0)


def kind_median(r, kind):
    t = sorted(x[2] for x in r.get("times", []) if x[1] == kind)
    return t[len(t) // 2] if t else None


if args.what == "line":
    r = json.loads(sys.stdin.read())
    if not r.get("ok"):
        print(f"  round {args.round} {r['config']:<14} FAILED: {r.get('error')}")
        sys.exit(0)
    lim = limit(r["size"])[0]
    print(f"  round {args.round} {r['config']:<14} last {r['last']:6.2f} s ({r['last'] / lim:.2f} x limit), "
          f"median {r['median']:.2f} s ({r['median'] / lim:.2f} x), first {r['first']:.2f} s; "
          f"seed up {r['seed_x']:.2f} x; links used: seed {r['seed_link_use']:.0%}, "
          f"leechers {r['leechers_link_use']:.0%}, swarm {r['swarm_link_use']:.0%}; "
          f"seed idle {r['seed_idle_s']:.1f} s, one copy's bytes by {fmt(r['seed_copy_s'], '.1f')} s; "
          f"leechers up {r['leechers_up_x']:.2f} x / down {r['leechers_down_x']:.2f} x "
          f"(sent, not counted received: {r['waste_x']:.2f} x); CPU {r['cpu']:.1f} s"
          + (f", super_seeding={r['super_seeding']}" if "super_seeding" in r else ""))
    if r["config"].startswith("mixed"):
        print(f"    medians by kind: shoal leechers {fmt(kind_median(r, 'shoal'), '.2f')} s, "
              f"libtorrent leechers {fmt(kind_median(r, 'lt'), '.2f')} s")
    c = r.get("capture")
    if c:
        cap_bytes = args.seed_up * 1e6 / 8
        idle = [b for b in c["bins"] if b["sent"] < cap_bytes / 2]
        starved = sum(1 for b in idle if b["outstanding_max"] == 0)
        print(f"    capture: the seed sent {c['blocks_sent']} blocks, {c['distinct_blocks']} distinct; "
              f"{c['dup_blocks']} again ({c['dup_concurrent']} while only the seed had the piece, "
              f"{c['dup_after_have']} after a peer had announced it; {c.get('dup_same_peer', 0)} to the same peer again); "
              f"{len(idle)} s under half the cap, "
              f"{starved} of them with no request waiting"
              + (f"; {c['broken_flows']} of {c['flows']} flows with capture gaps" if c["broken_flows"] else ""))
        if c.get("one_copy_out_s") is not None:
            print(f"    every piece had left the seed once by {c['one_copy_out_s']:.1f} s; the last "
                  f"{c['last_pieces']} (from {c['last_pieces_from_s']:.1f} s) went to "
                  f"{c['last_pieces_peers']} peers, at most {c['last_pieces_most_to_one']} to one")
        print("    per second: MiB sent (dup) / requests / offers / waiting min-max: "
              + " ".join(f"{b['sent'] / 2**20:.1f}({b['dup'] / 2**20:.1f})/{b['requests']}/{b['offers']}/"
                         f"{fmt(b['outstanding_min'], 'd')}-{b['outstanding_max']}" for b in c["bins"]))
    if c and r.get("timeline"):
        print("    per second, MiB on the links, seed/leechers (all): "
              + " ".join(f"{s:.1f}/{l:.1f}" for s, l in r["timeline"]))
    if r.get("hash_fails"):
        print(f"    hash fails: {r['hash_fails']}")
    if r.get("bad_exit"):
        print(f"    exit status: {r['bad_exit']}")
    for text, count in sorted(r.get("stderr_notes", {}).items(), key=lambda kv: -kv[1])[:8]:
        print(f"    stderr x{count}: {text}")
    sys.exit(0)

runs = [json.loads(l) for l in open(args.results) if l.strip()]
good = [r for r in runs if r.get("ok")]
failed = [r for r in runs if not r.get("ok")]
modes = [m for m in ORDER if any(r["config"] == m for r in runs)]
size = good[0]["size"] if good else None
lim = limit(size)[0] if size else None


def med(m, key):
    v = [r[key] for r in good if r["config"] == m and r.get(key) is not None]
    return statistics.median(v) if v else None


def x(v):
    return None if v is None or lim is None else v / lim


if lim is not None:
    print(f"limit {lim:.2f} s ({limit(size)[1]}); a perfect swarm still needs ~1.05 x (TCP/IP headers)")
print(f"{'mode':<26} {'runs':>4} {'last s':>7} {'x limit':>7} {'median s':>8} {'x limit':>7} "
      f"{'seed up x':>9} {'seed link':>9} {'swarm link':>10} {'seed idle s':>11} {'CPU s':>6}")
for m in modes:
    k = sum(1 for r in good if r["config"] == m)
    print(f"{LABEL[m]:<26} {k:>4} {fmt(med(m, 'last'), '7.2f')} {fmt(x(med(m, 'last')), '7.2f')} "
          f"{fmt(med(m, 'median'), '8.2f')} {fmt(x(med(m, 'median')), '7.2f')} "
          f"{fmt(med(m, 'seed_x'), '9.2f')} {fmt(med(m, 'seed_link_use'), '9.0%')} "
          f"{fmt(med(m, 'swarm_link_use'), '10.0%')} {fmt(med(m, 'seed_idle_s'), '11.1f')} "
          f"{fmt(med(m, 'cpu'), '6.1f')}")


def ratio(a, b, key):
    p, q = med(a, key), med(b, key)
    return None if p is None or q is None or q == 0 else p / q


print()
for a, b in [("shoal", "lt"), ("mixed", "lt"), ("shoal-initial", "lt-super"),
             ("mixed-initial", "lt-super"), ("shoal-initial", "lt")]:
    if a in modes and b in modes:
        print(f"ratio {a} / {b}:".ljust(36) + f"last {fmt(ratio(a, b, 'last'), '.2f')}, "
              f"median {fmt(ratio(a, b, 'median'), '.2f')}, seed upload {fmt(ratio(a, b, 'seed_x'), '.2f')}")

print()
for m in ["shoal", "shoal-initial"]:
    v = x(med(m, "last"))
    if v is not None:
        print(f"{'PASS' if v <= GOAL_LIMIT_X else 'MISS'}: {m}: last leecher {v:.3f} x the limit <= {GOAL_LIMIT_X}")
for a, b in [("shoal", "lt"), ("shoal-initial", "lt-super")]:
    v = ratio(a, b, "last")
    if v is not None:
        print(f"{'PASS' if v <= GOAL_LT_X else 'MISS'}: {a}: last leecher {v:.3f} x {b}'s <= {GOAL_LT_X}")
for a, b in [("mixed", "lt"), ("mixed-initial", "lt-super")]:
    v = ratio(a, b, "last")
    if v is not None:
        print(f"{'PASS' if v <= 1 else 'MISS'}: {a}: last leecher {v:.3f} x {b}'s <= 1")

if failed:
    print()
    for r in failed:
        print(f"FAIL: {r['config']}: {r.get('error', '?')}")
    sys.exit(1)
