#!/usr/bin/env bash
# Swarm benchmark: 1 seed + LEECHERS leechers of one SIZE_MB file on loopback,
# in one run for four configurations:
#   (a) shoal          shoal seed + shoal download x LEECHERS
#   (b) lt             python3-libtorrent, one process (one session) per peer
#   (c) lt-super       as (b), the seed with libtorrent's super-seeding flag
#   (d) shoal-initial  as (a), the seed with --initial-seeding (BEP 16)
# For each: seconds until the last leecher completes, the seed's upload as a
# multiple of the size, total CPU time of the swarm. Goals (PASS/MISS lines):
#   shoal's last-leecher time <= libtorrent's (plain swarms, (a) vs (b));
#   with initial seeding ((d)) the seed uploads <= 1.1 x the size.
# Reference from the issue (2 cores, libtorrent 2.0): plain seed 3.25 x size,
# last leecher 26.6 s; super-seeding 1.01 x, 33.9 s.
#
# Usage: bench/swarm.sh
#   env: LEECHERS=16 SIZE_MB=256 REPS=1 (each configuration REPS times,
#        interleaved; medians) TIMEOUT=600 (per run) DATA_DIR=/tmp/shoal-bench
#        CONFIGS="shoal lt lt-super shoal-initial" TRACKER_INTERVAL= (empty:
#        the tracker's default, 30 min, so every peer announces once)
#        SHOAL_BIN=path (a saved shoal binary to run instead of building
#          this tree's, e.g. to compare two builds in turn)
#
# Rules (the same for every configuration; bench/swarm/run.py does one run):
# - Every run gets a fresh `shoal tracker` on 127.0.0.1 and a torrent made by
#   `shoal create -l 18` (256 KiB pieces) announcing to it; all peers, shoal
#   or libtorrent, find each other through that tracker only (libtorrent
#   keeps its default PEX between peers; DHT, LSD, UPnP and uTP are off).
# - One process per peer, each on its own port on 127.0.0.1. libtorrent:
#   bench/swarm/lt_peer.py under /usr/bin/python3, stock settings plus
#   allow_multiple_connections_per_ip (all peers share an IP).
# - The seed serves the source file in place. It checks the data before
#   anything is timed (shoal seed always does; libtorrent is added without
#   seed_mode, so it checks up front too) and must be listed by the tracker.
#   Then all leechers start at once (t0), each into an empty directory, and
#   keep seeding to the others after they complete.
# - Complete = all pieces downloaded and SHA-1 checked: shoal's "download
#   complete" log line, libtorrent's torrent_finished_alert. The orchestrator
#   timestamps those lines as they arrive on the peers' pipes.
# - CPU = user+sys of every peer process when the last leecher completes
#   (/proc/PID/stat): the leechers' whole lives (process start-up included:
#   for libtorrent that is a Python interpreter per peer, printed below),
#   the seed's since t0. The tracker is left out.
# - Seed upload = payload bytes (shoal's --json "uploaded", libtorrent's
#   total_payload_upload) / size, read after the last leecher completes.
#   Each run also prints (seed's + leechers' upload - leechers' download) /
#   size: payload sent that no receiver counted (blocks arriving after a
#   cancel or a choke, or counted as sent and lost with the connection).
# - Afterwards every leecher's file is compared with the source (cmp); a
#   mismatch, a crash or a timeout fails the run (and the script, exit 1).
set -euo pipefail
# Loopback runs: no DHT (its default routers are on the internet).
export SHOAL_NO_DHT=1

LEECHERS=${LEECHERS:-16}
SIZE_MB=${SIZE_MB:-256}
REPS=${REPS:-1}
TIMEOUT=${TIMEOUT:-600}
DATA_DIR=${DATA_DIR:-/tmp/shoal-bench}
CONFIGS=${CONFIGS:-shoal lt lt-super shoal-initial}
TRACKER_INTERVAL=${TRACKER_INTERVAL:-}
GOAL_SEED_X=1.1

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE=$ROOT/bench/swarm
LTPY=/usr/bin/python3 # Debian's interpreter: the one with the libtorrent module

for tool in /usr/bin/time; do
    command -v "$tool" >/dev/null || { echo "error: $tool is required" >&2; exit 1; }
done
"$LTPY" -c 'import libtorrent' 2>/dev/null ||
    { echo "error: $LTPY has no libtorrent module (apt-get install python3-libtorrent)" >&2; exit 1; }

if [ -z "${SHOAL_BIN:-}" ]; then
    echo "== building shoal (release)"
    (cd "$ROOT" && cargo build --release --quiet)
fi

mkdir -p "$DATA_DIR"
TMP=$(mktemp -d "$DATA_DIR/swarm.XXXXXX") # same filesystem as the source
RUN_PID=
cleanup() {
    if [ -n "$RUN_PID" ]; then
        kill "$RUN_PID" 2>/dev/null || true # run.py stops its own peers
        wait "$RUN_PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A private copy: a rebuild of target/ during the run cannot swap the binary.
SHOAL=$TMP/shoal
cp "${SHOAL_BIN:-$ROOT/target/release/shoal}" "$SHOAL"

echo "== machine: $(nproc) cores ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), kernel $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== versions: $("$SHOAL" --version), libtorrent $("$LTPY" -c 'import libtorrent; print(libtorrent.__version__)')"

# --- the source file ------------------------------------------------------------

FILE=$DATA_DIR/swarm-${SIZE_MB}M.bin
BYTES=$((SIZE_MB * 1024 * 1024))
if [ "$(stat -c %s "$FILE" 2>/dev/null || echo 0)" -ne "$BYTES" ]; then
    echo "== making a ${SIZE_MB} MiB random file: $FILE"
    head -c "$BYTES" /dev/urandom >"$FILE.tmp.$$"
    mv "$FILE.tmp.$$" "$FILE"
else
    echo "== reusing $FILE"
fi
cat "$FILE" >/dev/null # into the page cache

# What one libtorrent peer process costs before it does any BitTorrent work.
read -r LT_START_U LT_START_S < <(/usr/bin/time -f '%U %S' "$LTPY" -c '
import libtorrent as lt
s = lt.session({"listen_interfaces": "127.0.0.1:0", "enable_dht": False, "enable_lsd": False,
                "enable_upnp": False, "enable_natpmp": False})
del s' 2>&1 >/dev/null | tail -n1)
awk -v u="$LT_START_U" -v s="$LT_START_S" -v n="$((LEECHERS + 1))" 'BEGIN {
    printf "== start-up CPU of one libtorrent peer process (python3, import, session): %.2f s (x %d peers = %.1f s)\n", u + s, n, (u + s) * n
}'

# --- runs -------------------------------------------------------------------------

echo "== $REPS round(s) of: $CONFIGS — 1 seed + $LEECHERS leechers, ${SIZE_MB} MiB, 256 KiB pieces, loopback"
RESULTS=$TMP/results.jsonl
: >"$RESULTS"
for ((r = 1; r <= REPS; r++)); do
    for c in $CONFIGS; do
        "$LTPY" "$HERE/run.py" "$c" "$SHOAL" "$FILE" "$TMP/run-$c" "$LEECHERS" "$TIMEOUT" \
            "$TRACKER_INTERVAL" >"$TMP/run.out" &
        RUN_PID=$!
        wait "$RUN_PID" || true
        RUN_PID=
        if ! tail -n1 "$TMP/run.out" | grep -q '^{'; then
            echo "{\"config\": \"$c\", \"ok\": false, \"error\": \"run.py printed no result\"}" >"$TMP/run.out"
        fi
        tail -n1 "$TMP/run.out" >>"$RESULTS"
        tail -n1 "$TMP/run.out" | "$LTPY" "$HERE/summary.py" line "$r"
    done
done

echo
echo "== summary (median of $REPS round(s); libtorrent = python3-libtorrent, one process per peer)"
"$LTPY" "$HERE/summary.py" table "$RESULTS" "$GOAL_SEED_X"
