#!/usr/bin/env bash
# Benchmark the time from start to complete metadata for a magnet link:
# shoal, python3-libtorrent and aria2c, each fetching the info dictionary
# (about 4 MiB: a 6.4 GiB sparse file in 32 KiB pieces, 209 715 pieces)
# from the same three libtorrent seeds on loopback, found through a local
# `shoal tracker` (the magnet's tr=). REPS interleaved rounds; prints each
# time, the medians, the ratios, and a PASS/MISS line for the goal:
#   shoal <= 0.5 x libtorrent's time.
#
# Usage: bench/magnet.sh
#   env: REPS=5 DATA_DIR=/tmp/shoal-bench-magnet PIECES=209715 TIMEOUT=120
#        SHOAL_LOG=FILTER (RUST_LOG for shoal; each run's log is appended
#          to $DATA_DIR/shoal-fetch.log)
#
# Rules: wall time of each client process from exec to exit (tracker round
# trip, connections, the whole fetch, the SHA-1 of the info dictionary);
# shoal runs `download --metadata-only`, aria2c `--bt-metadata-only`,
# libtorrent stops at metadata_received_alert (its process start-up is not
# counted, so the comparison favours it slightly). DHT, LSD, PEX, uTP off.
set -euo pipefail
# Loopback runs: no DHT (its default routers are on the internet).
export SHOAL_NO_DHT=1

REPS=${REPS:-5}
DATA_DIR=${DATA_DIR:-/tmp/shoal-bench-magnet}
PIECES=${PIECES:-209715}
TIMEOUT=${TIMEOUT:-120}
GOAL=0.5

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHOAL=$ROOT/target/release/shoal
LTPY=/usr/bin/python3
for tool in aria2c timeout truncate; do
    command -v "$tool" >/dev/null || { echo "error: $tool is required" >&2; exit 1; }
done
"$LTPY" -c 'import libtorrent' 2>/dev/null ||
    { echo "error: $LTPY has no libtorrent module (apt-get install python3-libtorrent)" >&2; exit 1; }

echo "== building shoal (release)"
(cd "$ROOT" && cargo build --release --quiet)
echo "== machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== versions: $("$SHOAL" --version), libtorrent $("$LTPY" -c 'import libtorrent; print(libtorrent.__version__)'), $(aria2c --version | head -n1)"

mkdir -p "$DATA_DIR"
FILE=$DATA_DIR/sparse.bin
BYTES=$((PIECES * 32768))
[ "$(stat -c %s "$FILE" 2>/dev/null || echo 0)" -eq "$BYTES" ] || truncate -s "$BYTES" "$FILE"

TMP=$(mktemp -d "$DATA_DIR/run.XXXXXX")
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_line() { # FILE SED_EXPR PID WHAT
    local v
    for _ in $(seq 600); do
        v=$(sed -n "$2" "$1" 2>/dev/null | head -n1)
        [ -n "$v" ] && { echo "$v"; return 0; }
        kill -0 "$3" 2>/dev/null || break
        sleep 0.1
    done
    echo "error: $4 did not start:" >&2; cat "$1" >&2; exit 1
}
free_port() { "$LTPY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

env -u RUST_LOG "$SHOAL" tracker --listen 127.0.0.1:0 2>"$TMP/tracker.log" &
PIDS+=($!)
TRACKER=$(wait_line "$TMP/tracker.log" 's/.*listening on \([0-9.]*:[0-9]*\).*/\1/p' "$!" "shoal tracker")
ANNOUNCE=http://$TRACKER/announce

CACHE=$DATA_DIR/t-$PIECES.torrent
if [ ! -e "$CACHE" ]; then
    echo "== hashing $((BYTES >> 20)) MiB (sparse) into a torrent of $PIECES pieces"
    "$SHOAL" create "$FILE" -l 15 -o "$CACHE" >/dev/null 2>&1
fi
# The tracker's port changes each run: a torrent around the cached info.
"$LTPY" - "$CACHE" "$ANNOUNCE" "$TMP/t.torrent" <<'PY'
import sys, libtorrent as lt
d = lt.bdecode(open(sys.argv[1], "rb").read())
d[b"announce"] = sys.argv[2].encode()
open(sys.argv[3], "wb").write(lt.bencode(d))
PY
MAGNET=$("$SHOAL" show "$TMP/t.torrent" --json | "$LTPY" -c 'import json, sys; print(json.load(sys.stdin)["magnet"])')
INFO=$("$SHOAL" show "$TMP/t.torrent" --json | "$LTPY" -c 'import json, sys; j = json.load(sys.stdin); print(j["piece_count"], "pieces")')
echo "== torrent: $INFO, info dictionary $(( $(wc -c <"$TMP/t.torrent") >> 10 )) KiB"

for i in 1 2 3; do
    "$LTPY" "$ROOT/bench/download/lt_seed.py" "$TMP/t.torrent" "$DATA_DIR" default >"$TMP/seed$i.log" 2>&1 &
    PIDS+=($!)
    wait_line "$TMP/seed$i.log" 's/^seeding \([0-9]*\)$/\1/p' "$!" "libtorrent seed $i" >/dev/null
done
echo "== three libtorrent seeds (stock settings) announced to $ANNOUNCE"

now() { date +%s.%N; }
run_shoal() {
    rm -rf "$TMP/out"
    local t0; t0=$(now)
    timeout "$TIMEOUT" env RUST_LOG="${SHOAL_LOG:-warn}" "$SHOAL" download "$MAGNET" -o "$TMP/out" --port 0 \
        --metadata-only -q >/dev/null 2>"$TMP/shoal.log" || { cat "$TMP/shoal.log" >&2; return 1; }
    [ -z "${SHOAL_LOG:-}" ] || cat "$TMP/shoal.log" >>"$DATA_DIR/shoal-fetch.log"
    echo "$(now) - $t0" | bc
}
run_lt() {
    rm -rf "$TMP/out"
    local t0; t0=$(now)
    timeout "$TIMEOUT" "$LTPY" "$ROOT/bench/magnet/lt_magnet.py" "$MAGNET" "$TMP/out" "$TIMEOUT" >"$TMP/lt.log" 2>&1 ||
        { cat "$TMP/lt.log" >&2; return 1; }
    echo "$(now) - $t0" | bc
}
run_aria2() {
    rm -rf "$TMP/out"; mkdir -p "$TMP/out"
    local t0; t0=$(now)
    timeout "$TIMEOUT" aria2c -q --enable-dht=false --enable-dht6=false --bt-enable-lpd=false \
        --enable-peer-exchange=false --listen-port "$(free_port)" --bt-metadata-only=true \
        --bt-save-metadata=true -d "$TMP/out" "$MAGNET" >"$TMP/aria2.log" 2>&1 ||
        { cat "$TMP/aria2.log" >&2; return 1; }
    echo "$(now) - $t0" | bc
}

declare -A TIMES
for r in $(seq "$REPS"); do
    for c in shoal lt aria2; do
        t=$("run_$c")
        TIMES[$c]="${TIMES[$c]:-} $t"
        printf '   round %d %-6s %6.3f s\n' "$r" "$c" "$t"
    done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
S=$(echo "${TIMES[shoal]}" | median)
L=$(echo "${TIMES[lt]}" | median)
A=$(echo "${TIMES[aria2]}" | median)
echo "== medians over $REPS rounds: shoal $S s, libtorrent $L s, aria2c $A s"
RATIO=$(echo "scale=3; $S / $L" | bc)
echo "== shoal / libtorrent = $RATIO, shoal / aria2c = $(echo "scale=3; $S / $A" | bc)"
if (( $(echo "$RATIO <= $GOAL" | bc) )); then
    echo "PASS shoal <= $GOAL x libtorrent"
else
    echo "MISS shoal <= $GOAL x libtorrent ($RATIO)"
fi
