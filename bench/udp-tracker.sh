#!/usr/bin/env bash
# Benchmark the UDP tracker (BEP 15): `shoal tracker` against opentracker
# and aquatic_udp, with aquatic_udp_load_test as the load (loopback).
#
# Usage: bench/udp-tracker.sh
#   env: ROUNDS=5 DURATION=8 TORRENTS=100000 SERVER_CPU=0 LOAD_CPU=1
#        SHOAL=target/release/shoal AQUATIC_BIN=~/.aquatic/bin
#
# Each server runs on one pinned core with one worker (shoal --threads 1,
# opentracker listen.udp.workers 1, aquatic_udp socket_workers 1) and the
# load generator (1 worker, 4 sockets, the default request mix: 50%
# connect, 50% announce, 1 weight of scrape, numwant 30, 75% seeders) on
# the other. The load's TORRENTS info hashes come from a seeded RNG
# (bench/udp-tracker/hashes.py reproduces them), so opentracker (whose
# Debian build serves only whitelisted hashes) gets them all in its
# whitelist. shoal runs twice per round: with the same file as
# --whitelist ("shoal", compared with opentracker: both check every
# announce against a list) and without ("shoal-open", compared with
# aquatic_udp, which runs without one). ROUNDS rounds, the servers'
# order rotating each round; a fresh server per run.
# Printed: announce responses per second (the load test's own count over
# the whole run), all responses per second, the median of each, and the
# ratios shoal / opentracker and shoal / aquatic_udp (medians, and the
# median of per-round ratios: runs of one round share the machine's
# state, and this shared VM drifts).
#
# Needs: opentracker (Debian), aquatic_udp and aquatic_udp_load_test
# (crates.io; installed into $AQUATIC_BIN when missing — aquatic_udp 0.9
# does not build with its own lock file on this toolchain, so it is
# installed without --locked), taskset, python3.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-8}
TORRENTS=${TORRENTS:-100000}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
SHOAL=${SHOAL:-target/release/shoal}
AQUATIC_BIN=${AQUATIC_BIN:-$HOME/.aquatic/bin}
export SHOAL_NO_DHT=1

for tool in opentracker taskset python3; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found" >&2; exit 1; }
done
if [ ! -x "$AQUATIC_BIN/aquatic_udp_load_test" ]; then
    cargo install --locked aquatic_udp_load_test --root "$(dirname "$AQUATIC_BIN")"
fi
if [ ! -x "$AQUATIC_BIN/aquatic_udp" ]; then
    cargo install aquatic_udp --root "$(dirname "$AQUATIC_BIN")"
fi
[ -x "$SHOAL" ] || cargo build --release

TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

echo "== machine: $(nproc) cores ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), kernel $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== servers on CPU $SERVER_CPU with one worker each, the load (aquatic_udp_load_test, 1 worker) on CPU $LOAD_CPU"
echo "== $TORRENTS info hashes, $DURATION s per run, $ROUNDS rounds"

mkdir -p "$TMP/ot"
python3 bench/udp-tracker/hashes.py "$TORRENTS" >"$TMP/ot/whitelist"
chmod 755 "$TMP/ot"
chmod 644 "$TMP/ot/whitelist"
"$AQUATIC_BIN/aquatic_udp_load_test" -p >"$TMP/load-default.toml"
"$AQUATIC_BIN/aquatic_udp" -p >"$TMP/aquatic-default.toml"

# start_server NAME PORT: starts it pinned; sets SERVER_PID.
start_server() {
    local name=$1 port=$2
    case $name in
    shoal)
        taskset -c "$SERVER_CPU" "$SHOAL" tracker --listen "127.0.0.1:$port" --no-http \
            --threads 1 --whitelist "$TMP/ot/whitelist" --max-numwant 30 \
            >"$TMP/shoal.log" 2>&1 &
        ;;
    shoal-open)
        taskset -c "$SERVER_CPU" "$SHOAL" tracker --listen "127.0.0.1:$port" --no-http \
            --threads 1 --max-numwant 30 >"$TMP/shoal.log" 2>&1 &
        ;;
    opentracker)
        printf 'listen.udp.workers 1\n' >"$TMP/ot/ot.conf"
        chmod 644 "$TMP/ot/ot.conf"
        # As root opentracker chroots into -d, so the whitelist path is
        # relative to it.
        local wl=/whitelist
        [ "$(id -u)" = 0 ] || wl=$TMP/ot/whitelist
        taskset -c "$SERVER_CPU" opentracker -f "$TMP/ot/ot.conf" -i 127.0.0.1 \
            -P "$port" -w "$wl" -d "$TMP/ot" >"$TMP/ot.log" 2>&1 &
        ;;
    aquatic_udp)
        sed -e "s/^socket_workers = .*/socket_workers = 1/" \
            -e "s/^address = .*/address = \"127.0.0.1:$port\"/" \
            -e "s/^max_response_peers = .*/max_response_peers = 30/" \
            "$TMP/aquatic-default.toml" >"$TMP/aquatic.toml"
        taskset -c "$SERVER_CPU" "$AQUATIC_BIN/aquatic_udp" -c "$TMP/aquatic.toml" \
            >"$TMP/aquatic.log" 2>&1 &
        ;;
    esac
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    # Up once it answers a connect.
    for _ in $(seq 100); do
        python3 - "$port" <<'EOF' && return 0
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.1)
s.sendto(struct.pack(">QII", 0x41727101980, 0, 7), ("127.0.0.1", int(sys.argv[1])))
try:
    sys.exit(0 if len(s.recv(64)) == 16 else 1)
except OSError:
    sys.exit(1)
EOF
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "error: $name did not start" >&2
    cat "$TMP"/*.log >&2 || true
    exit 1
}

# run NAME ROUND: one timed run; appends to $TMP/NAME.announce and .all.
run() {
    local name=$1 port
    port=$(free_port)
    start_server "$name" "$port"
    sed -e "s/^server_address = .*/server_address = \"127.0.0.1:$port\"/" \
        -e "s/^duration = .*/duration = $DURATION/" \
        -e "s/^number_of_torrents = .*/number_of_torrents = $TORRENTS/" \
        "$TMP/load-default.toml" >"$TMP/load.toml"
    taskset -c "$LOAD_CPU" "$AQUATIC_BIN/aquatic_udp_load_test" -c "$TMP/load.toml" \
        >"$TMP/load.out" 2>&1 || true
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    local all ann err
    all=$(awk '/Average responses per second/ { print $NF; exit }' "$TMP/load.out")
    ann=$(awk '/Announce responses/ { print $NF; exit }' "$TMP/load.out")
    err=$(awk '/Error responses/ { print $NF; exit }' "$TMP/load.out")
    if [ -z "$ann" ]; then
        echo "error: no summary from the load test against $name:" >&2
        tail -20 "$TMP/load.out" >&2
        exit 1
    fi
    echo "$ann" >>"$TMP/$name.announce"
    echo "$all" >>"$TMP/$name.all"
    printf "  round %d  %-12s %9.0f announce responses/s  %9.0f responses/s  (errors %s/s)\n" \
        "$2" "$name" "$ann" "$all" "$err"
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) exit; if (NR % 2) m = v[(NR + 1) / 2]; else m = (v[NR / 2] + v[NR / 2 + 1]) / 2; print m }'; }

servers=(shoal opentracker shoal-open aquatic_udp)
for r in $(seq "$ROUNDS"); do
    for i in 0 1 2 3; do
        run "${servers[$(((i + r) % 4))]}" "$r"
    done
done

echo
echo "== summary (medians of $ROUNDS rounds)"
s=$(median <"$TMP/shoal.announce")
o=$(median <"$TMP/opentracker.announce")
a=$(median <"$TMP/aquatic_udp.announce")
n=$(median <"$TMP/shoal-open.announce")
so=$(paste "$TMP/shoal.announce" "$TMP/opentracker.announce" | awk '{ print $1 / $2 }' | median)
sa=$(paste "$TMP/shoal-open.announce" "$TMP/aquatic_udp.announce" | awk '{ print $1 / $2 }' | median)
ao=$(paste "$TMP/aquatic_udp.announce" "$TMP/opentracker.announce" | awk '{ print $1 / $2 }' | median)
awk -v s="$s" -v n="$n" -v o="$o" -v a="$a" -v so="$so" -v sa="$sa" -v ao="$ao" 'BEGIN {
    printf "  shoal (whitelist):     %9.0f announce responses/s\n", s
    printf "  shoal (no whitelist):  %9.0f announce responses/s\n", n
    printf "  opentracker:           %9.0f announce responses/s (whitelist)\n", o
    printf "  aquatic_udp:           %9.0f announce responses/s (no whitelist)\n", a
    printf "  shoal / opentracker, both whitelisted:  %5.2f (median of rounds %5.2f; goal >= 1.3: %s)\n", s / o, so, (so >= 1.3 ? "met" : "NOT met")
    printf "  shoal / aquatic_udp, neither:           %5.2f (median of rounds %5.2f; goal >= 1.1: %s)\n", n / a, sa, (sa >= 1.1 ? "met" : "NOT met")
    printf "  aquatic_udp / opentracker:              %5.2f (median of rounds %5.2f)\n", a / o, ao
}'
echo "  (all responses/s, medians: shoal $(median <"$TMP/shoal.all"), shoal-open $(median <"$TMP/shoal-open.all"), opentracker $(median <"$TMP/opentracker.all"), aquatic_udp $(median <"$TMP/aquatic_udp.all"))"
