"""Per-host, per-second link use of one bench/wan.sh run.

  python3 bench/wan/links.py FILE [UP_MBIT]

FILE is what bench/swarm/run.py wrote for DUMP_TX=FILE: each host's
sampled count of bytes sent (every 0.1 s), and each leecher's completion
time. Prints one row per host: for each second from the start, the bytes
its link carried as a percentage of UP_MBIT (default 20), and when the
leecher completed. A leecher's row shows whether its link idled because
nobody asked it for anything (a low row among full ones) or the whole
swarm did (a low column).
"""

import json
import sys


def main():
    d = json.load(open(sys.argv[1]))
    cap = float(sys.argv[2] if len(sys.argv) > 2 else 20) * 1e6 / 8
    t0, done = d["t0"], d["complete"]
    end = max(done.values())

    def at(tx, t):
        """Bytes sent by time t, linear between samples."""
        for (a, x), (b, y) in zip(tx, tx[1:]):
            if b >= t:
                return x + (y - x) * (t - a) / (b - a) if b > a else y
        return tx[-1][1]

    seconds = int(end) + 1
    print("host  " + " ".join("%3d" % k for k in range(seconds)) + "  (% of the cap per second)")
    for tag, tx in d["tx"].items():
        row = [(at(tx, t0 + k + 1) - at(tx, t0 + k)) / cap for k in range(seconds)]
        tail = "  done %.1f s" % done[tag] if tag in done else ""
        print("%-5s %s%s" % (tag, " ".join("%3d" % round(100 * x) for x in row), tail))


if __name__ == "__main__":
    main()
