#!/usr/bin/env bash
# Benchmark the DHT in a private loopback network of about 50 nodes (40
# libtorrent, 10 `shoal dht`): time from start to the first peer of a
# torrent one libtorrent node announced, for a fresh shoal node and a fresh
# libtorrent session told one random node of the network (REPS interleaved
# rounds, medians, ratio); then a flood of find_node queries from one
# address at a shoal node, and the bytes it answers with relative to the
# bytes it received. Goals: shoal <= libtorrent's time; flood <= 3 x.
#
# Usage: bench/dht.sh     env: REPS=7 LT_NODES=40 SH_NODES=10
set -euo pipefail
REPS=${REPS:-7}
LT_NODES=${LT_NODES:-40}
SH_NODES=${SH_NODES:-10}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
/usr/bin/python3 -c 'import libtorrent' 2>/dev/null ||
    { echo "error: /usr/bin/python3 has no libtorrent module (apt-get install python3-libtorrent)" >&2; exit 1; }
echo "== building shoal (release)"
(cd "$ROOT" && cargo build --release --quiet)
exec /usr/bin/python3 "$ROOT/bench/dht/dht_bench.py" "$ROOT/target/release/shoal" "$LT_NODES" "$SH_NODES" "$REPS"
