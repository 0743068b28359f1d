"""Summary table for bench/swarm.sh.

  summary.py line ROUND                    one run's result (JSON on stdin) as text
  summary.py table RESULTS.jsonl GOAL_SEED_X

RESULTS.jsonl: one run.py result per line. table Prints medians per
configuration, ratios shoal / libtorrent, and a PASS/MISS line per goal:
  - shoal's last-leecher time <= libtorrent's (plain swarms);
  - with initial seeding, shoal's seed uploads <= GOAL_SEED_X x the size.
Exit status 1 when a run failed (or a configuration has no good run).
"""

import json
import statistics
import sys



def line(rnd):
    r = json.loads(sys.stdin.read())
    if not r.get("ok"):
        print(f"  round {rnd} {r['config']:<14} FAILED: {r.get('error')}")
        return
    print(f"  round {rnd} {r['config']:<14} last {r['last']:6.2f} s (first {r['first']:.2f}, "
          f"median {r['median']:.2f}), seed up {r['seed_x']:.2f} x, leechers up "
          f"{r['leechers_up_x']:.2f} x / down {r['leechers_down_x']:.2f} x (sent, not counted received: "
          f"{r['waste_x']:.2f} x), CPU {r['cpu']:.1f} s "
          f"(seed {r['cpu_seed']:.1f}, leechers {r['cpu_leechers']:.1f}; tracker {r['cpu_tracker']:.2f})"
          + (f", super_seeding={r['super_seeding']}" if "super_seeding" in r else ""))
    if r.get("hash_fails"):
        print(f"    hash fails: {r['hash_fails']}")
    if r.get("bad_exit"):
        print(f"    exit status: {r['bad_exit']}")
    for text, count in sorted(r.get("stderr_notes", {}).items(), key=lambda kv: -kv[1])[:8]:
        print(f"    stderr x{count}: {text}")


if sys.argv[1] == "line":
    line(sys.argv[2])
    sys.exit(0)
path, goal_x = sys.argv[2], float(sys.argv[3])
runs = [json.loads(l) for l in open(path) if l.strip()]
order = ["shoal", "lt", "lt-super", "shoal-initial"]
label = {
    "shoal": "(a) shoal",
    "lt": "(b) libtorrent",
    "lt-super": "(c) libtorrent super-seeding",
    "shoal-initial": "(d) shoal --initial-seeding",
}
configs = [c for c in order if any(r["config"] == c for r in runs)]
failed = [r for r in runs if not r.get("ok")]


def med(c, key):
    v = [r[key] for r in runs if r["config"] == c and r.get("ok")]
    return statistics.median(v) if v else None


def fmt(v, f):
    return "-" if v is None else format(v, f)


print(f"{'config':<30} {'runs':>4} {'last leecher s':>14} {'first/median s':>15} "
      f"{'seed up x size':>14} {'CPU s':>7} {'(seed':>6} {'leechers)':>9}")
for c in configs:
    good = sum(1 for r in runs if r["config"] == c and r.get("ok"))
    fm = f"{fmt(med(c, 'first'), '.1f')}/{fmt(med(c, 'median'), '.1f')}"
    print(f"{label[c]:<30} {good:>4} {fmt(med(c, 'last'), '14.2f')} {fm:>15} "
          f"{fmt(med(c, 'seed_x'), '14.2f')} {fmt(med(c, 'cpu'), '7.1f')} "
          f"{fmt(med(c, 'cpu_seed'), '6.1f')} {fmt(med(c, 'cpu_leechers'), '9.1f')}")


def ratio(a, b, key):
    x, y = med(a, key), med(b, key)
    return None if x is None or y is None or y == 0 else x / y


print()
for a, b in [("shoal", "lt"), ("shoal-initial", "lt-super"), ("shoal-initial", "lt")]:
    if a in configs and b in configs:
        print(f"ratio {a} / {b}:".ljust(32)
              + f"last leecher {fmt(ratio(a, b, 'last'), '.2f')}, "
              + f"seed upload {fmt(ratio(a, b, 'seed_x'), '.2f')}, "
              + f"CPU {fmt(ratio(a, b, 'cpu'), '.2f')}")

print()
s, l = med("shoal", "last"), med("lt", "last")
if s is not None and l is not None:
    print(f"{'PASS' if s <= l else 'MISS'}: shoal's last leecher {s:.2f} s <= libtorrent's {l:.2f} s (plain swarms)")
else:
    print(f"{'MISS' if 'shoal' in configs and 'lt' in configs else 'SKIP'}: last-leecher goal not measured (needs a good shoal and lt run)")
x = med("shoal-initial", "seed_x")
if x is not None:
    print(f"{'PASS' if x <= goal_x else 'MISS'}: with --initial-seeding shoal's seed uploaded {x:.3f} x size <= {goal_x}")
else:
    print(f"{'MISS' if 'shoal-initial' in configs else 'SKIP'}: initial-seeding goal not measured (needs a good shoal-initial run)")

if failed:
    print()
    for r in failed:
        print(f"FAIL: {r['config']}: {r.get('error', '?')}")
    sys.exit(1)
missing = [c for c in order if c in configs and med(c, "last") is None]
sys.exit(1 if missing else 0)
